"""The console's release pages against a real server after a real (small) training job, approved by
the hospital's officer in a real Chromium through the inbox (the job waits until then), and a real
statistics answer: the hospital's officer sees every receipt check passed and "verified", with the
DP report's figures, ledger and audit entries; a byte flipped in a stored artefact makes the page
say "does not verify" naming the digest check; another organisation's officer gets 404; without a
pinned root the page says the root was fetched from the server."""

from __future__ import annotations

import re

import pytest

from cleanroom.domain.identity import Role
from cleanroom.domain.organisations import OrgKind
from cleanroom.statistics.engine import Query
from cleanroom.storage import dataset_repo
from cleanroom.v1 import jobs_pb2
from tests.console.browser import DESKTOP, TABLET, Browser, axe, chromium, describe, screenshot
from tests.console.harness import ConsoleWorld
from tests.jobs.study import FEATURES, breast_cancer_study
from tests.releases.tamper import flipped_artifact
from tests.tools import needs

pytestmark = needs("bwrap")  # the server's sandboxes (tests/tools.py)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One study; a small training job that waits for the hospital's officer, who approves it in a
    real Chromium through the console's inbox, after which it runs and is released; one statistics
    answer; a console with the pinned root and one without."""
    base = tmp_path_factory.mktemp("console-releases")
    with breast_cancer_study(base) as study:
        running, maker, app = study["running"], study["maker"], study["running"].app
        with app.db.read() as session:
            hospital = dataset_repo.get_dataset(session, study["dataset"].removeprefix("datasets/")).organisation_id
        other = app.principals.create_organisation("Another hospital", OrgKind.HOSPITAL, actor="test")
        root = base / "root.pem"
        root.write_bytes(app.enclave.root.public_key_pem())
        pinned, unpinned = ConsoleWorld(running, trust_root=root), ConsoleWorld(running)
        try:
            people = {name: app.principals.create(name, role, actor="test", organisation_id=org)[0].id
                      for name, role, org in (("officer", Role.PRIVACY_OFFICER, hospital), ("other", Role.PRIVACY_OFFICER, other.id),
                                              ("owner", Role.DATA_OWNER, hospital))}
            study["officer"].set_approval_policy(study["dataset"], max_epsilon=3, auto_approve_epsilon=0.5,
                                                 reason="jobs wait for an officer")
            spec = jobs_pb2.TrainingSpec(model=study["model"], dataset=study["dataset"], feature_columns=FEATURES,
                                         label_column="malignant", target_epsilon=1.0, target_delta=1e-5, epochs=1,
                                         expected_batch_patients=64, learning_rate=0.1, optimizer="sgd", clipping_norm=1.0,
                                         validation_fraction=0.2)
            waiting = maker.train(spec)
            assert waiting.state == jobs_pb2.JOB_STATE_PENDING_APPROVAL
            with chromium() as driver:
                _approve_in_the_inbox(Browser(driver, pinned), people["officer"], waiting.privacy_request)
            job = maker.wait_job(waiting.name, timeout=300)
            assert job.state == jobs_pb2.JOB_STATE_RELEASED, jobs_pb2.JobFailure.Name(job.failure)
            maker.run_query(study["dataset"], Query(kind="mean", column="mean_radius", bounds=(0.0, 40.0), epsilon=0.5))
            maker_id = maker.whoami().name.removeprefix("principals/")
            yield {**study, "job": job, "console": pinned, "unpinned": unpinned, "people": people, "maker_id": maker_id,
                   "release": job.name.removeprefix("jobs/")}
        finally:
            pinned.stop()
            unpinned.stop()


def _approve_in_the_inbox(browser: Browser, officer_id: str, request: str) -> None:
    """The officer signs in, opens the job's request from the inbox and approves it: the job then runs."""
    browser.sign_in(officer_id)
    browser.open("/inbox")
    browser.click_and_wait(browser.find(f"a[href='/inbox/{request.removeprefix('privacyRequests/')}']"))
    assert "training of" in browser.text()  # what it would run, in words
    browser.find("#reason").send_keys("pilot fine-tune, one epoch")
    browser.click_and_wait(browser.button("Approve"))
    assert f"{request} approved" in browser.text()


@pytest.fixture(scope="module")
def officer(world):
    return world["console"].sign_in_as(world["people"]["officer"])


def test_the_officers_release_page_shows_every_check_passed_and_verified(world, officer) -> None:
    listing = officer.get("/releases")
    assert listing.status == 200 and f'href="/releases/{world["release"]}"' in listing.body
    assert "statistics" in listing.body and "training" in listing.body
    assert f'/releases/{world["release"]}' in officer.get("/releases?kind=training").body
    assert f'/releases/{world["release"]}' not in officer.get("/releases?kind=statistics").body
    page = officer.get(f"/releases/{world['release']}")
    assert page.status == 200
    assert "✔ Verified" in page.body and "Does not verify" not in page.body and "FAILED" not in page.body
    for check in ("signature", "measurement", "workload", "files", "digest:weights.safetensors", "digest:report.html", "epsilon"):
        assert re.search(rf'<th scope="row">{re.escape(check)}</th>\s*<td><span class="ok">✔ passed', page.body), check
    assert "data:image/svg+xml;base64," in page.body and 'alt="ROC curve' in page.body  # the report's figures
    assert "Validation metrics" in page.body and "pinned in this console" in page.body and "not pinned" not in page.body
    assert re.search(r'<a href="/audit/entries/\d+">entry \d+</a>: job\.', page.body)  # its audit entries, linked
    assert "commit" in page.body and "reserve" in page.body  # its ledger events
    report = officer.get(f"/releases/{world['release']}/files/report.html")
    assert report.status == 200 and report.headers["content-type"] == "application/octet-stream"
    assert report.headers["content-disposition"].startswith("attachment") and "<svg" in report.body
    assert officer.get(f"/releases/{world['release']}/files/..%2Fetc").status == 404


def test_a_statistics_answer_has_its_own_verified_page(world, officer) -> None:
    answer = re.search(r'href="/releases/([^"]+)"', officer.get("/releases?kind=statistics").body).group(1)
    page = officer.get(f"/releases/{answer}")
    assert page.status == 200 and "✔ Verified" in page.body and "The released answer" in page.body
    assert "digest:answer.json" in page.body
    assert re.search(r'<th scope="row">all</th><td>mean</td><td class="num">[0-9.]+</td>', page.body)  # the cell, readable


def test_a_flipped_byte_in_a_stored_artefact_makes_the_page_say_does_not_verify(world, officer) -> None:
    job_id = world["release"]
    with flipped_artifact(world["running"].app, job_id, "weights.safetensors"):
        page = officer.get(f"/releases/{job_id}")
    assert page.status == 200
    assert "✘ Does not verify" in page.body and "✔ Verified" not in page.body
    assert re.search(r'<th scope="row">digest:weights\.safetensors</th>\s*<td><span class="bad">✘ FAILED', page.body)
    assert "(digest:weights.safetensors)" in page.body  # the verdict names the failed check
    assert "✔ Verified" in officer.get(f"/releases/{job_id}").body  # restored


def test_another_organisations_officer_gets_404_and_the_data_owner_403(world) -> None:
    other = world["console"].sign_in_as(world["people"]["other"])
    assert other.get(f"/releases/{world['release']}").status == 404
    assert other.get(f"/releases/{world['release']}/files/receipt.json").status == 404
    assert other.get("/releases/j0000000000000000").status == 404
    assert f"/releases/{world['release']}" not in other.get("/releases").body
    owner = world["console"].sign_in_as(world["people"]["owner"])
    assert owner.get(f"/releases/{world['release']}").status == 403


def test_the_manufacturer_sees_its_release_and_an_unpinned_console_says_so(world) -> None:
    maker = world["unpinned"].sign_in_as(world["maker_id"])
    page = maker.get(f"/releases/{world['release']}")
    assert page.status == 200 and "✔ Verified" in page.body
    assert "Trust root fetched from the server, not pinned" in page.body


def test_a_pinned_root_file_that_is_not_a_key_verifies_nothing(world, tmp_path) -> None:
    bad = tmp_path / "root.pem"
    bad.write_text("not a key")
    console = ConsoleWorld(world["running"], trust_root=bad)
    try:
        page = console.sign_in_as(world["people"]["officer"]).get(f"/releases/{world['release']}")
    finally:
        console.stop()
    assert page.status == 200 and "✘ Does not verify" in page.body and "✔ Verified" not in page.body
    assert "pinned trust root file cannot be read" in page.body  # never silently replaced by the server's root


@needs("browser")
def test_the_release_page_with_its_figures_is_accessible_at_laptop_and_tablet_width(world, chromium, screenshots) -> None:
    browser = Browser(chromium, world["console"])
    browser.sign_in(world["people"]["officer"])
    for size in (DESKTOP, TABLET):
        browser.resize(size)
        browser.open(f"/releases/{world['release']}")
        assert "Verified" in browser.text() and browser.find("img[src^='data:image/svg+xml']").get_attribute("alt")
        assert not (found := axe(chromium)), describe(found)
        assert browser.horizontal_overflow() <= 0, size
    screenshot(chromium, screenshots, "release-training")
