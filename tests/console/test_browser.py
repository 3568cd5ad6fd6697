"""The console in a real Chromium against a real server and database: an officer approves a
request in the inbox and the manufacturer's request then runs; a rejection refunds; a tampered
audit entry shows as a broken chain; a release verifies, and a tampered artefact does not; the inbox
works with the keyboard alone; no horizontal scroll at 1280 px or a tablet's width; axe finds no
serious or critical violation on any role's pages; screenshots of the main pages.

One server, one console and one Chromium for the module (Chromium's start-up is slow); the two
tampering tests put back what they changed. The manufacturer's request is a statistics query above
the auto-approve line rather than a training job: on this 2-core machine the job's study (model
intake) and run took 72 s + 38 s, over this suite's whole budget, and the console treats both the
same (a pending privacy request, approved in the inbox, then run by the manufacturer).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium.webdriver import ActionChains, Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from sqlalchemy import update

from cleanroom.cli import samples
from cleanroom.domain.identity import Role
from cleanroom.domain.organisations import OrgKind
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.sdk.schema import Schema
from cleanroom.statistics.engine import Query
from cleanroom.storage.tables import AnswerReleaseRow, AuditEntryRow
from tests.conftest import Running, make_config, start_server
from tests.console.browser import DESKTOP, TABLET, Browser, axe, describe, screenshot
from tests.console.harness import ConsoleWorld
from tests.tools import needs

pytestmark = needs("browser")

ALLOWED = Query(kind="mean", column="mean_radius", bounds=(0.0, 40.0), epsilon=0.5)  # within the auto-approve line
ABOVE_THE_LINE = Query(kind="count", epsilon=2.0)  # the policy below auto-approves up to ε 1.5
MAIN_PAGES = {  # role -> the pages its navigation offers (cleanroom/console/web.py NAVIGATION)
    "officer": ("/inbox", "/budgets", "/audit", "/releases"),
    "auditor": ("/budgets", "/audit", "/releases"),
    "owner": ("/hospital", "/audit"),
    "maker": ("/releases",),
    "admin": ("/",),  # no work area: the home page
}


@dataclass
class World:
    running: Running
    console: ConsoleWorld
    dataset: str
    people: dict[str, str]  # who -> principal id
    clients: dict[str, Client]
    browser: Browser
    waiting: str  # a request left pending for the whole module: the inbox is never empty
    release: str  # releases/{id} of the manufacturer's first answer

    @property
    def dataset_id(self) -> str:
        return self.dataset.removeprefix("datasets/")

    def sign_in(self, who: str) -> Browser:
        self.browser.resize(DESKTOP)
        self.browser.sign_in(self.people[who])
        return self.browser

    def pending(self) -> str:
        """A new pending privacy request: the manufacturer's query above the auto-approve line."""
        return _new_pending(self.clients["maker"], self.clients["officer"], self.dataset)


def _new_pending(maker: Client, officer: Client, dataset: str) -> str:
    before = {p.name for p in officer.pending_requests()}
    with pytest.raises(CleanroomClientError):
        maker.run_query(dataset, ABOVE_THE_LINE)  # refused until an officer approves
    (name,) = {p.name for p in officer.pending_requests()} - before
    return name


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, chromium: Chrome) -> Iterator[World]:
    base = tmp_path_factory.mktemp("console-browser")
    running = start_server(make_config(base / "state", work_dir=base / "work"))
    console = ConsoleWorld(running)
    app = running.app
    hospital = app.principals.create_organisation("St Example Hospital", OrgKind.HOSPITAL, actor="test")
    roles = {"officer": Role.PRIVACY_OFFICER, "auditor": Role.AUDITOR, "owner": Role.DATA_OWNER, "maker": Role.MANUFACTURER,
             "admin": Role.ADMIN}
    people, clients = {}, {}
    for who, role in roles.items():
        principal, token = app.principals.create(f"Example {who}", role, actor="test",
                                                 organisation_id=None if role in (Role.MANUFACTURER, Role.ADMIN) else hospital.id)
        people[who], clients[who] = principal.id, running.client(token)
    try:
        dataset = clients["owner"].upload_dataset(samples.write_breast_cancer_csv(base / "bc.csv"),
                                                  Schema(samples.breast_cancer_schema(), 5)).name
        officer = clients["officer"]
        officer.set_budget(dataset, epsilon=20, delta=1e-4, reason="hospital total")
        officer.share_dataset(dataset, f"principals/{people['maker']}", epsilon=15, delta=1e-4, reason="pilot study")
        officer.set_approval_policy(dataset, max_epsilon=3, auto_approve_epsilon=1.5, reason="routine")
        clients["maker"].run_query(dataset, ALLOWED)  # a release to look at
        waiting = _new_pending(clients["maker"], officer, dataset)
        release = next(clients["maker"].list_releases()).name
        yield World(running, console, dataset, people, clients, Browser(chromium, console), waiting, release)
    finally:
        for client in clients.values():
            client.close()
        console.stop()
        running.server.stop(grace=0)


def _table(browser: Browser, caption: str) -> dict[str, dict[str, str]]:
    """A table found by its caption: row header -> {column header: cell text}."""
    for table in browser.find_all("table"):
        found = table.find_elements(By.TAG_NAME, "caption")
        if found and caption in found[0].text:
            columns = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
            rows = {}
            for row in table.find_elements(By.CSS_SELECTOR, "tbody tr"):
                cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "th, td")]
                rows[cells[0]] = dict(zip(columns, cells, strict=False))
            return rows
    raise AssertionError(f"no table captioned {caption!r} on {browser.path}")


def _share(world: World) -> dict[str, str]:
    """The manufacturer's share as the budgets page shows it."""
    world.browser.open(f"/budgets/{world.dataset_id}")
    rows = _table(world.browser, "each manufacturer's share")
    return next(row for header, row in rows.items() if "(share)" in header)


def _decide(browser: Browser, request: str, decision: str, reason: str) -> None:
    browser.open("/inbox")
    browser.click_and_wait(browser.find(f"a[href='/inbox/{request.removeprefix('privacyRequests/')}']"))
    browser.find("#reason").send_keys(reason)
    browser.click_and_wait(browser.button(decision))


def test_the_sign_in_page(world: World, screenshots: Path) -> None:
    browser = world.browser
    browser.driver.delete_all_cookies()
    browser.open("/sign-in")
    assert browser.heading() == "Sign in"
    assert not (found := axe(browser.driver)), describe(found)
    screenshot(browser.driver, screenshots, "sign-in")


def test_an_officer_approves_in_the_inbox_and_the_manufacturers_query_then_runs(world: World) -> None:
    request = world.pending()
    browser = world.sign_in("officer")
    assert browser.path.split("?")[0] == "/inbox"
    reserved_before = float(_share(world)["Reserved ε"])
    _decide(browser, request, "Approve", "routine count for the study")
    assert browser.path.startswith("/inbox") and f"{request} approved" in browser.text()
    assert f"/inbox/{request.removeprefix('privacyRequests/')}" not in browser.driver.page_source  # no longer pending
    assert float(_share(world)["Reserved ε"]) == pytest.approx(reserved_before + ABOVE_THE_LINE.epsilon)
    maker = world.clients["maker"]
    released_before = {r.name for r in maker.list_releases()}
    answer = maker.run_query(world.dataset, ABOVE_THE_LINE, privacy_request=request)
    assert answer.epsilon == pytest.approx(ABOVE_THE_LINE.epsilon) and answer.receipt  # it ran: a signed DP answer
    (release,) = {r.name for r in maker.list_releases()} - released_before
    browser.open("/releases")
    browser.click_and_wait(browser.find(f"a[href='/{release}']"))  # the officer finds it among the releases
    assert "Verified" in browser.find("main").text


def test_a_rejected_request_takes_nothing_from_the_budget(world: World) -> None:
    browser = world.sign_in("officer")
    before = _share(world)
    request = world.pending()
    browser.open(f"/inbox/{request.removeprefix('privacyRequests/')}")
    budgets = _table(browser, "Remaining ε on each budget this request touches")
    share_row = next(row for header, row in budgets.items() if header != "whole dataset")
    assert float(share_row["After ε"]) == pytest.approx(float(before["Remaining ε"]) - ABOVE_THE_LINE.epsilon)
    _decide(browser, request, "Reject", "not part of the agreed protocol")
    assert f"{request} rejected" in browser.text()
    after = _share(world)
    assert (after["Remaining ε"], after["Reserved ε"], after["Spent ε"]) == (before["Remaining ε"], before["Reserved ε"], before["Spent ε"])
    with pytest.raises(CleanroomClientError):
        world.clients["maker"].run_query(world.dataset, ABOVE_THE_LINE, privacy_request=request)


def _press(browser: Browser, key: str) -> WebElement:
    ActionChains(browser.driver).send_keys(key).perform()
    active: WebElement = browser.driver.switch_to.active_element
    return active


def _tab_to(browser: Browser, matches: object, limit: int = 80) -> WebElement:
    """TAB until the focused element satisfies `matches`; asserts focus is visible there."""
    for _ in range(limit):
        focused = _press(browser, Keys.TAB)
        if matches(focused):  # type: ignore[operator]
            outline = focused.value_of_css_property("outline-style")
            assert outline not in ("none", ""), f"no visible focus on {focused.tag_name} {focused.text!r}"
            return focused
    raise AssertionError(f"TAB never reached the element on {browser.path}")


def test_the_inbox_approval_works_with_the_keyboard_alone(world: World) -> None:
    request = world.pending()
    request_id = request.removeprefix("privacyRequests/")
    browser = world.sign_in("officer")
    browser.open("/inbox")
    _tab_to(browser, lambda e: (e.get_attribute("href") or "").endswith(f"/inbox/{request_id}"))
    _press(browser, Keys.ENTER)
    browser.wait_until(lambda _: browser.path == f"/inbox/{request_id}")
    browser.find("#reason")
    _tab_to(browser, lambda e: e.get_attribute("id") == "reason")
    ActionChains(browser.driver).send_keys("agreed at the data access committee").perform()
    _tab_to(browser, lambda e: e.tag_name == "button" and e.text == "Approve")
    _press(browser, Keys.ENTER)
    browser.wait_until(lambda _: browser.path.split("?")[0] == "/inbox")
    assert f"{request} approved" in browser.find("main").text
    assert request not in {p.name for p in world.clients["officer"].pending_requests()}


def test_a_tampered_audit_entry_shows_as_a_broken_chain(world: World, screenshots: Path) -> None:
    browser = world.sign_in("auditor")
    browser.open("/audit")
    browser.click_and_wait(browser.button("Check the chain"))
    assert "Intact" in browser.text() and "BROKEN" not in browser.text()
    app, seq = world.running.app, 3
    with app.db.read() as session:
        row = session.get(AuditEntryRow, seq)
        assert row is not None
        original = row.details_json
    with app.db.transaction() as session:
        session.execute(update(AuditEntryRow).where(AuditEntryRow.seq == seq).values(details_json='{"epsilon": 0.0}'))
    try:
        browser.click_and_wait(browser.button("Check again"))
        assert "BROKEN" in browser.text() and f"breaks at entry {seq}" in browser.text(), browser.text()
        assert not (found := axe(browser.driver)), describe(found)
        screenshot(browser.driver, screenshots, "audit-broken")
    finally:
        with app.db.transaction() as session:
            session.execute(update(AuditEntryRow).where(AuditEntryRow.seq == seq).values(details_json=original))
    browser.click_and_wait(browser.button("Check again"))
    assert "Intact" in browser.text()


def test_a_release_verifies_and_a_tampered_artefact_does_not(world: World, screenshots: Path) -> None:
    browser = world.sign_in("officer")
    browser.open("/releases")
    browser.click_and_wait(browser.find("table a[href^='/releases/']"))
    release_id = browser.path.removeprefix("/releases/")
    assert "Verified" in browser.text() and "Does not verify" not in browser.text()
    screenshot(browser.driver, screenshots, "release")
    app = world.running.app
    with app.db.read() as session:
        row = session.get(AnswerReleaseRow, release_id)
        assert row is not None, f"release {release_id} is not a statistics answer"
        original = row.answer_json
    with app.db.transaction() as session:
        session.execute(update(AnswerReleaseRow).where(AnswerReleaseRow.id == release_id).values(answer_json=original.replace(b"0", b"1", 1)))
    try:
        browser.driver.refresh()
        text = browser.find("main").text
        assert "Does not verify" in text and "digest:answer.json" in text and "Verified:" not in text, text
    finally:
        with app.db.transaction() as session:
            session.execute(update(AnswerReleaseRow).where(AnswerReleaseRow.id == release_id).values(answer_json=original))


def _pages_of(world: World, who: str) -> list[str]:
    """The role's main pages, the detail pages they lead to, and a page its role is refused (403)."""
    release = world.release.replace("releases/", "/releases/")
    detail = {
        "officer": [f"/inbox/{world.waiting.removeprefix('privacyRequests/')}", f"/budgets/{world.dataset_id}", "/audit/verify",
                    "/set-password"],
        "auditor": [f"/budgets/{world.dataset_id}", "/audit/entries/1", "/audit/verify", release, "/inbox"],
        "owner": [f"/hospital/datasets/{world.dataset_id}",
                  f"/hospital/datasets/{world.dataset_id}/shares/{world.people['maker']}/withdraw", "/releases"],
        "maker": [release, "/inbox"],
        "admin": ["/audit"],
    }
    return [*MAIN_PAGES[who], *detail[who]]


SCREENSHOTS = {("officer", "/inbox"): "inbox", ("officer", "/budgets/"): "budgets", ("auditor", "/audit"): "audit",
               ("owner", "/hospital/"): "hospital", ("officer", "/inbox/"): "inbox-request"}


@pytest.mark.parametrize("who", list(MAIN_PAGES))
def test_every_page_of_each_role_is_accessible_and_fits_a_laptop_and_a_tablet(world: World, who: str, screenshots: Path) -> None:
    browser = world.sign_in(who)
    navigation = set(MAIN_PAGES[who]) if who != "admin" else set()  # an admin's work is the CLI
    problems, shot = [], set()
    for path in _pages_of(world, who):
        for size in (DESKTOP, TABLET):
            browser.resize(size)
            browser.open(path)
            assert browser.path.split("?")[0] == path and browser.heading(), (path, browser.text()[:300])
            if overflow := browser.horizontal_overflow():
                problems.append(f"{path} at {size[0]} px scrolls sideways by {overflow} px")
            links = [a for a in browser.find_all("nav[aria-label=Main] a") if a.is_displayed()]
            if {(a.get_attribute("href") or "").removeprefix(browser.base) for a in links} != navigation:
                problems.append(f"{path} at {size[0]} px: the navigation shows {[a.text for a in links]}")
            if size == DESKTOP:
                problems += [f"{path}: {line}" for line in describe(axe(browser.driver)).splitlines()]
                name = next((n for (role, prefix), n in SCREENSHOTS.items()
                             if role == who and (path == prefix or (prefix.endswith("/") and path.startswith(prefix)))), None)
                if name and name not in shot:  # the first page a prefix matches (a dataset's page, not its withdraw form)
                    screenshot(browser.driver, screenshots, name)
                    shot.add(name)
    browser.resize(DESKTOP)
    assert not problems, "\n".join(problems)
