"""Pausing, resuming and withdrawing a share over real gRPC (and the CLI), and a hospital's view of its shares:
the dataset's data owner and officers act, another hospital gets NOT_FOUND (as for a missing
dataset), other roles PERMISSION_DENIED; a paused share refuses the manufacturer's new work with
FAILED_PRECONDITION, a withdrawn one hides the dataset from it for good."""

from __future__ import annotations

import grpc
import pytest

from cleanroom.domain.identity import Role
from cleanroom.domain.privacy import Privacy
from cleanroom.privacy.ledger import SpendRequest
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.statistics.engine.query import Query
from tests.api.hospital_world import Hospital, make_hospital
from tests.server.test_server_process import cli


@pytest.fixture
def world(running, tmp_path):
    maker_id, maker_token = running.principal(Role.MANUFACTURER, "Acme")
    north = make_hospital(running, tmp_path, "North", maker_id)
    south = make_hospital(running, tmp_path, "South", maker_id)
    maker = Client(running.address, maker_token)
    yield {"north": north, "south": south, "maker": maker, "maker_name": f"principals/{maker_id}", "running": running}
    for closeable in (north, south, maker):
        closeable.close()


def _error(call) -> CleanroomClientError:
    with pytest.raises(CleanroomClientError) as err:
        call()
    assert "Traceback" not in str(err.value) and "/work/" not in str(err.value)
    return err.value


def _share_line(report, maker_name: str):
    return next(b for b in report.budgets if b.manufacturer == maker_name)


def test_the_hospital_pauses_and_resumes_a_share(world) -> None:
    north: Hospital = world["north"]
    maker, maker_name = world["maker"], world["maker_name"]
    report = north.owner.set_share_state(north.dataset, maker_name, "paused", reason="ethics committee review")
    line = _share_line(report, maker_name)
    assert (line.share_state, line.share_state_reason) == ("paused", "ethics committee review")
    assert _share_line(maker.get_budgets(north.dataset), maker_name).share_state == "paused"  # the manufacturer sees why
    assert {d.name for d in maker.list_datasets()} == {north.dataset, world["south"].dataset}  # still seen while paused

    query = Query(kind="count", epsilon=0.1)
    for call in (lambda: maker.run_query(north.dataset, query), lambda: maker.estimate_query(north.dataset, query)):
        error = _error(call)
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION and "paused" in str(error)
    assert _share_line(north.officers[0].get_budgets(north.dataset), maker_name).reserved.epsilon == 0  # cost nothing
    estimate = maker.estimate_cost(north.dataset, epsilon=0.1, delta=0)
    assert not estimate.fits and not estimate.remaining_after and "paused" in estimate.notes[0]

    env = {"CLEANROOM_SERVER": world["running"].address, "CLEANROOM_TOKEN": north.tokens["officer 2"]}
    out = cli("privacy", "resume", north.dataset, maker_name, "--reason", "review done", env=env).stdout
    assert f"{north.dataset}/manufacturers/{maker_name.removeprefix('principals/')}: active (review done)" in out
    assert _share_line(north.owner.get_budgets(north.dataset), maker_name).share_state == "active"
    assert maker.estimate_query(north.dataset, query).budget.fits


def test_a_withdrawn_share_hides_the_dataset_for_good(world) -> None:
    north: Hospital = world["north"]
    maker, maker_name = world["maker"], world["maker_name"]
    report = north.owner.set_share_state(north.dataset, maker_name, "withdrawn", reason="consent withdrawn")
    assert _share_line(report, maker_name).share_state == "withdrawn"
    assert north.dataset not in {d.name for d in maker.list_datasets()}
    for call in (lambda: maker.get_dataset(north.dataset), lambda: maker.get_budgets(north.dataset)):
        assert _error(call).code is grpc.StatusCode.NOT_FOUND
    for state in ("active", "paused"):
        error = _error(lambda s=state: north.officers[0].set_share_state(north.dataset, maker_name, s, reason="undo"))
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION and "final" in str(error)
    error = _error(lambda: north.officers[0].share_dataset(north.dataset, maker_name, epsilon=1, delta=1e-6, reason="again"))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION


def test_only_the_datasets_hospital_may_change_its_shares(world) -> None:
    north, south = world["north"], world["south"]
    maker, maker_name, running = world["maker"], world["maker_name"], world["running"]
    for outsider in (south.owner, south.officers[0]):
        error = _error(lambda c=outsider: c.set_share_state(north.dataset, maker_name, "paused", reason="not ours"))
        assert error.code is grpc.StatusCode.NOT_FOUND and str(error).count("dataset not found")
    missing = _error(lambda: north.owner.set_share_state("datasets/d0000000000000000", maker_name, "paused", reason="x"))
    assert missing.code is grpc.StatusCode.NOT_FOUND  # another's dataset reads exactly like a missing one
    _, admin_token = running.principal(Role.ADMIN, "Admin")
    with Client(running.address, admin_token) as admin:
        for caller in (maker, north.auditor, admin):
            error = _error(lambda c=caller: c.set_share_state(north.dataset, maker_name, "paused", reason="x"))
            assert error.code is grpc.StatusCode.PERMISSION_DENIED
    bad_state = _error(lambda: north.owner.set_share_state(north.dataset, maker_name, "frozen", reason="x"))
    no_reason = _error(lambda: north.owner.set_share_state(north.dataset, maker_name, "paused", reason=" "))
    assert bad_state.code is no_reason.code is grpc.StatusCode.INVALID_ARGUMENT
    assert _share_line(north.owner.get_budgets(north.dataset), maker_name).share_state == "active"


def test_a_hospital_sees_who_its_datasets_are_shared_with_and_what_they_spent(world) -> None:
    north, south, maker_name = world["north"], world["south"], world["maker_name"]
    world["running"].app.ledger.reserve(_spend(north.dataset_id, maker_name), actor_id="system")
    report = north.owner.get_budgets(north.dataset)
    share = _share_line(report, maker_name)
    assert share.manufacturer_display_name == "Acme" and share.cap.epsilon == 4 and share.reserved.epsilon == pytest.approx(0.5)
    assert any(not b.manufacturer and b.cap.epsilon == 10 for b in report.budgets)
    events = list(north.owner.ledger(dataset=north.dataset))
    assert {e.kind for e in events} == {"cap", "reserve"}
    assert all(b.startswith(north.dataset) for e in north.owner.ledger() for b in e.budgets)  # its own datasets only
    for call in (lambda: south.owner.get_budgets(north.dataset), lambda: list(south.owner.ledger(dataset=north.dataset))):
        assert _error(call).code is grpc.StatusCode.NOT_FOUND


def _spend(dataset_id: str, maker_name: str) -> SpendRequest:
    return SpendRequest(dataset_id, maker_name.removeprefix("principals/"), "statistics", "q/1", Privacy.cost(0.5, 0))
