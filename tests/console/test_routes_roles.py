"""Every console route x every role, over plain HTTP against a real console and server.

The routes come from the application itself (build_console -> app.routes), so a new route fails
here until ROUTES says who it serves. ROUTES names the RPCs each page calls; who it serves is
checked against cleanroom/api/auth.py RULES (the intersection of those RPCs' roles), so the table
cannot drift from the API's own rules. Then, for each route: signed out -> sent to sign in; a role
the API refuses -> 403; a served role -> the page (or its documented redirect); never a 500; and a
POST without the session's CSRF token -> 403, changing nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select
from starlette.routing import Route

from cleanroom.api.auth import RULES
from cleanroom.cli import samples
from cleanroom.console.app import build_console
from cleanroom.console.config import ConsoleConfig
from cleanroom.console.sessions import COOKIE
from cleanroom.domain.identity import Role
from cleanroom.domain.organisations import OrgKind
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.sdk.schema import Schema
from cleanroom.statistics.engine import Query
from cleanroom.storage.tables import AuditEntryRow
from tests.conftest import Running, make_config, start_server
from tests.console.harness import PASSWORD, ConsoleWorld, HttpSession

OFFICER, AUDITOR, OWNER, MAKER, ADMIN = (Role.PRIVACY_OFFICER, Role.AUDITOR, Role.DATA_OWNER, Role.MANUFACTURER,
                                         Role.ADMIN)
SIGNED_OUT = None
EVERY_ROLE = frozenset(Role)
ABOVE_THE_LINE = Query(kind="count", epsilon=2.0)


def rpc(name: str) -> str:
    service = {"ListPendingRequests": "PrivacyService", "ApproveRequest": "PrivacyService", "RejectRequest": "PrivacyService",
               "GetBudgets": "PrivacyService", "ListLedger": "PrivacyService", "SetBudget": "PrivacyService",
               "SetShareState": "PrivacyService", "ExportAuditLog": "AuditService", "VerifyAuditLog": "AuditService",
               "SignAuditExport": "AuditService", "ListReleases": "ReleaseService", "GetRelease": "ReleaseService",
               "DownloadReleaseArtifact": "ReleaseService", "GetTrustBundle": "AttestationService",
               "ListDatasets": "DatasetService", "GetDataset": "DatasetService"}[name]
    return f"/cleanroom.v1.{service}/{name}"


@dataclass(frozen=True)
class Serves:
    """Who a route serves, the RPCs its answer depends on, and what a served role gets."""

    roles: frozenset[Role]
    rpcs: tuple[str, ...] = ()          # () for the account pages: every signed-in person
    status: int = 200                   # what a served role gets
    location: str = ""                  # where a 303 goes (a prefix)
    form: dict[str, str] = field(default_factory=dict)  # a POST's valid fields
    exceptions: dict[Role, tuple[int, str]] = field(default_factory=dict)  # a served role's other answer, and why


HOME = {OFFICER: "/inbox", AUDITOR: "/audit", OWNER: "/hospital", MAKER: "/releases"}
DATASET, REQUEST, RELEASE, SHARE = "{dataset_id}", "{request_id}", "{release_id}", "{manufacturer_id}"

# (method, path) -> who it serves. The hospital's pages show only the data owner's own datasets: a
# manufacturer may read a dataset shared with it (GetDataset), but it is not the hospital's, so 404.
ROUTES: dict[tuple[str, str], Serves] = {
    ("GET", "/"): Serves(EVERY_ROLE, status=303, exceptions={ADMIN: (200, "no work area: the home page")}),
    ("GET", "/sign-in"): Serves(EVERY_ROLE),
    ("POST", "/sign-in"): Serves(EVERY_ROLE, status=303, location="/sign-in?error="),  # tested in test_sessions.py
    ("POST", "/sign-out"): Serves(EVERY_ROLE, status=303, location="/sign-in?notice="),
    ("GET", "/set-password"): Serves(EVERY_ROLE),
    ("POST", "/set-password"): Serves(EVERY_ROLE, status=303, form={"new_password": PASSWORD, "again": PASSWORD}),
    ("GET", "/inbox"): Serves(frozenset({OFFICER}), (rpc("ListPendingRequests"),)),
    ("GET", "/inbox/{request_id}"): Serves(frozenset({OFFICER}), (rpc("ListPendingRequests"),)),
    ("POST", "/inbox/{request_id}"): Serves(frozenset({OFFICER}), (rpc("ApproveRequest"),), status=303, location="/inbox?notice=",
                                            form={"decision": "approve", "reason": "route x role test"}),
    # a manufacturer: the datasets shared with it, its own share's budget only
    ("GET", "/budgets"): Serves(frozenset({OFFICER, AUDITOR, OWNER, MAKER}), (rpc("ListDatasets"), rpc("GetBudgets"))),
    ("GET", "/budgets/{dataset_id}"): Serves(frozenset({OFFICER, AUDITOR, OWNER}), (rpc("GetBudgets"), rpc("ListLedger"))),
    ("POST", "/budgets/{dataset_id}"): Serves(frozenset({OFFICER}), (rpc("SetBudget"),), status=303, location="/budgets/",
                                              form={"action": "cap", "epsilon": "20", "delta": "0.0001", "reason": "unchanged"}),
    ("GET", "/audit"): Serves(frozenset({OFFICER, AUDITOR, OWNER}), (rpc("ExportAuditLog"),)),
    ("GET", "/audit/verify"): Serves(frozenset({OFFICER, AUDITOR}), (rpc("VerifyAuditLog"),)),
    ("GET", "/audit/export"): Serves(frozenset({OFFICER, AUDITOR, OWNER}), (rpc("SignAuditExport"),)),
    ("GET", "/audit/entries/{seq:int}"): Serves(frozenset({OFFICER, AUDITOR, OWNER}), (rpc("ExportAuditLog"),)),
    ("GET", "/releases"): Serves(frozenset({OFFICER, AUDITOR, MAKER}), (rpc("ListReleases"),)),
    # ExportAuditLog too, but a role it refuses still gets the page, with the entries' numbers only
    ("GET", "/releases/{release_id}"): Serves(frozenset({OFFICER, AUDITOR, MAKER}),
                                              (rpc("GetRelease"), rpc("DownloadReleaseArtifact"), rpc("GetTrustBundle"))),
    ("GET", "/releases/{release_id}/files/{artifact}"): Serves(frozenset({OFFICER, AUDITOR, MAKER}),
                                                                (rpc("GetRelease"), rpc("DownloadReleaseArtifact"))),
    # a manufacturer, officer or auditor: an empty list (the page shows a hospital's own datasets only)
    ("GET", "/hospital"): Serves(frozenset({OWNER, MAKER, OFFICER, AUDITOR}), (rpc("ListDatasets"),)),
    ("GET", "/hospital/datasets/{dataset_id}"): Serves(frozenset({OWNER, MAKER}), (rpc("GetDataset"), rpc("GetBudgets")),
                                                       exceptions={MAKER: (404, "not the manufacturer's hospital")}),
    ("POST", "/hospital/datasets/{dataset_id}/shares/{manufacturer_id}/state"): Serves(
        frozenset({OFFICER, OWNER}), (rpc("SetShareState"),), status=303, location="/hospital/datasets/",
        form={"state": "active", "reason": "route x role test"}),
    ("GET", "/hospital/datasets/{dataset_id}/shares/{manufacturer_id}/withdraw"): Serves(
        frozenset({OWNER, MAKER}), (rpc("GetDataset"), rpc("GetBudgets")), exceptions={MAKER: (404, "not the manufacturer's hospital")}),
    ("POST", "/hospital/datasets/{dataset_id}/shares/{manufacturer_id}/withdraw"): Serves(
        frozenset({OFFICER, OWNER}), (rpc("SetShareState"),), status=303, location="/hospital/datasets/",
        form={"confirm": "withdraw", "reason": "route x role test"}),
}
# Answers that do not need this console's session: the sign-in form, and signing out (harmless)
OPEN = {("GET", "/sign-in"): (200, ""), ("POST", "/sign-in"): (303, "/sign-in?error="), ("POST", "/sign-out"): (303, "/sign-in?notice=")}
# Forms that cannot carry the session's token: sign-in (its own double-submitted token) and sign-out
# (without the token it only says so and signs nobody out); test_sessions.py tests both
NO_SESSION_TOKEN = {("POST", "/sign-in"): "/sign-in?error=", ("POST", "/sign-out"): "/?error="}


def console_routes() -> list[tuple[str, str]]:
    app, _console = build_console(ConsoleConfig())
    found = []
    for route in app.routes:
        if isinstance(route, Route):
            found += [(method, route.path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return found


def test_every_route_of_the_console_is_in_the_table() -> None:
    assert sorted(console_routes()) == sorted(ROUTES)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_who_a_route_serves_is_what_the_apis_rules_allow(route: tuple[str, str]) -> None:
    serves = ROUTES[route]
    if not serves.rpcs:
        assert serves.roles == EVERY_ROLE
        return
    unknown = [name for name in serves.rpcs if name not in RULES]
    assert not unknown, f"{route}: no such RPC in auth.RULES: {unknown}"
    allowed = frozenset.intersection(*(RULES[name] for name in serves.rpcs))
    assert serves.roles == allowed, f"{route} says it serves {sorted(r.value for r in serves.roles)}; the API allows {sorted(r.value for r in allowed)}"


@dataclass
class World:
    running: Running
    console: ConsoleWorld
    values: dict[str, str]
    sessions: dict[Role, HttpSession]
    maker: Client
    officer: Client

    def path(self, template: str) -> str:
        path = template.replace("{seq:int}", self.values["seq"])
        return re.sub(r"\{(\w+)\}", lambda m: self.values[m.group(1)], path)

    def new_pending(self) -> str:
        before = {p.name for p in self.officer.pending_requests()}
        with pytest.raises(CleanroomClientError):
            self.maker.run_query(self.values["dataset"], ABOVE_THE_LINE)
        (name,) = {p.name for p in self.officer.pending_requests()} - before
        return name.removeprefix("privacyRequests/")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("routes-roles")
    running = start_server(make_config(base / "state"))
    console = ConsoleWorld(running)
    app = running.app
    hospital = app.principals.create_organisation("Route Hospital", OrgKind.HOSPITAL, actor="test")
    ids, clients = {}, {}
    for role in Role:
        principal, token = app.principals.create(f"route {role.value}", role, actor="test",
                                                 organisation_id=hospital.id if role in (OFFICER, AUDITOR, OWNER) else None)
        ids[role], clients[role] = principal.id, running.client(token)
    try:
        dataset = clients[OWNER].upload_dataset(samples.write_breast_cancer_csv(base / "bc.csv"),
                                                Schema(samples.breast_cancer_schema(), 5)).name
        officer, maker = clients[OFFICER], clients[MAKER]
        officer.set_budget(dataset, epsilon=20, delta=1e-4, reason="total")
        officer.share_dataset(dataset, f"principals/{ids[MAKER]}", epsilon=15, delta=1e-4, reason="pilot")
        # the share the hospital's share routes pause and withdraw: another manufacturer's, so the
        # manufacturer above keeps its own for the requests the inbox routes decide
        other, _token = app.principals.create("route other manufacturer", MAKER, actor="test")
        officer.share_dataset(dataset, f"principals/{other.id}", epsilon=1, delta=1e-5, reason="withdrawn by the test")
        officer.set_approval_policy(dataset, max_epsilon=3, auto_approve_epsilon=1.5, reason="routine")
        maker.run_query(dataset, Query(kind="count", epsilon=0.5))
        release = next(maker.list_releases()).name.removeprefix("releases/")
        with app.db.read() as session:  # an entry every reader of the audit log sees: the hospital's own upload
            seq = session.scalars(select(AuditEntryRow.seq).where(AuditEntryRow.target == dataset)).first()
        values = {"dataset": dataset, "dataset_id": dataset.removeprefix("datasets/"), "release_id": release,
                  "artifact": "answer.json", "manufacturer_id": other.id, "seq": str(seq), "request_id": ""}
        sessions = {role: console.sign_in_as(ids[role]) for role in Role}
        yield World(running, console, values, sessions, maker, officer)
    finally:
        for client in clients.values():
            client.close()
        console.stop()
        running.server.stop(grace=0)


def _expected(route: tuple[str, str], role: Role | None) -> tuple[int, str]:
    serves = ROUTES[route]
    if role is SIGNED_OUT:
        if route in OPEN:
            return OPEN[route]
        method, path = route
        return 303, "/sign-in?next=" + ("/" if method == "POST" else "")
    if role not in serves.roles:
        return 403, ""
    if role in serves.exceptions:
        return serves.exceptions[role][0], ""
    if route == ("GET", "/"):
        return 303, HOME[role]
    if route == ("POST", "/set-password"):
        return 303, HOME.get(role, "/")
    return serves.status, serves.location


def _call(world: World, session: HttpSession, route: tuple[str, str], *, with_token: bool = True) -> tuple[int, str, str]:
    method, template = route
    if template.endswith("{request_id}"):
        world.values["request_id"] = world.new_pending()  # each decision needs a request still pending
    path = world.path(template)
    if method == "GET":
        answer = session.get(path)
    else:
        form = dict(ROUTES[route].form)
        if with_token:
            form["csrf"] = session.get("/set-password").csrf() if COOKIE in session.cookies else ""
        answer = session.request("POST", path, form)
    return answer.status, answer.location, answer.body


ORDER = sorted(ROUTES, key=lambda r: r == ("POST", "/sign-out"))  # signing out last: it ends the session


@pytest.mark.parametrize("role", [SIGNED_OUT, *Role], ids=lambda r: "signed-out" if r is None else r.value)
def test_every_route_answers_each_role_as_the_api_decides(world: World, role: Role | None) -> None:
    session = world.console.anonymous() if role is SIGNED_OUT else world.sessions[role]
    wrong = []
    for route in ORDER:
        status, location, body = _call(world, session, route)
        expected_status, expected_location = _expected(route, role)
        if status != expected_status or not location.startswith(expected_location):
            wrong.append(f"{route}: {status} {location!r}, expected {expected_status} {expected_location!r}")
        if status >= 500 or "Traceback" in body:
            wrong.append(f"{route}: a server error")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_a_form_without_the_sessions_csrf_token_is_refused_for_every_role(world: World, role: Role) -> None:
    session = world.console.sign_in_as(world.sessions[role].principal.removeprefix("principals/"))
    before = world.officer.get_budgets(world.values["dataset"])
    wrong = []
    for route in (r for r in sorted(ROUTES) if r[0] == "POST"):
        status, location, _body = _call(world, session, route, with_token=False)
        if route in NO_SESSION_TOKEN:
            if status != 303 or not location.startswith(NO_SESSION_TOKEN[route]):
                wrong.append(f"{route}: {status} {location!r}")
        elif status != 403:
            wrong.append(f"{route}: {status} {location!r}, expected 403")
    assert not wrong, "\n".join(wrong)
    assert session.get("/set-password").status == 200  # still signed in
    assert world.officer.get_budgets(world.values["dataset"]) == before  # nothing changed
