"""Two-officer approval and the inbox's pending composition over real gRPC: the policy set through
SetApprovalPolicy (and the CLI), the first approval leaves the request pending with its approver
shown, the same officer again is FAILED_PRECONDITION with a structured reason, a second officer's
approval reserves; approving the whole inbox leaves exactly the budgets ListPendingRequests predicted."""

from __future__ import annotations

import grpc
import pytest

from cleanroom.domain.identity import Role
from cleanroom.domain.privacy import Privacy
from cleanroom.privacy.ledger import SpendRequest
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.storage import principal_repo
from tests.api.hospital_world import Hospital, make_hospital
from tests.server.test_server_process import cli


@pytest.fixture
def world(running, tmp_path):
    maker_id, maker_token = running.principal(Role.MANUFACTURER, "Acme")
    north = make_hospital(running, tmp_path, "North", maker_id)
    with running.app.db.read() as session:
        maker = principal_repo.get_principal(session, maker_id)
    yield {"north": north, "maker": maker, "running": running}
    north.close()


def _error(call) -> CleanroomClientError:
    with pytest.raises(CleanroomClientError) as err:
        call()
    assert "Traceback" not in str(err.value)
    return err.value


def _submit(world, eps: float, reference: str):
    north: Hospital = world["north"]
    request = SpendRequest(north.dataset_id, world["maker"].id, "training", reference, Privacy.cost(eps, 1e-7))
    return world["running"].app.approvals.submit(world["maker"], request)


def test_two_different_officers_must_approve(world) -> None:
    north: Hospital = world["north"]
    first, second = north.officers
    policy = first.set_approval_policy(north.dataset, max_epsilon=5, approvals_required=2, reason="four eyes")
    assert policy.approvals_required == 2 and north.owner.get_budgets(north.dataset).policy.approvals_required == 2
    request = _submit(world, 1.0, "jobs/one").resource_name

    pending = first.approve(request, "the protocol is sound")
    assert (pending.state, pending.approvals_required) == ("pending", 2)
    assert [a.officer for a in pending.approvals] == [f"principals/{north.officer_ids[0]}"]
    assert pending.approvals[0].reason == "the protocol is sound" and pending.approvals[0].time.seconds > 0
    listed = [r for r in first.pending_requests() if r.name == request]
    assert listed and len(listed[0].approvals) == 1

    again = _error(lambda: first.approve(request, "really"))
    assert again.code is grpc.StatusCode.FAILED_PRECONDITION and "a second officer must approve" in again.message
    assert [v.field for v in again.violations] == ["approvals"]
    assert next(b for b in first.get_budgets(north.dataset).budgets if not b.manufacturer).reserved.epsilon == 0

    done = second.approve(request, "agreed")
    assert done.state == "approved" and done.decided_by == f"principals/{north.officer_ids[1]}"
    assert [a.officer for a in done.approvals] == [f"principals/{i}" for i in north.officer_ids]
    assert next(b for b in first.get_budgets(north.dataset).budgets if not b.manufacturer).reserved.epsilon == pytest.approx(1)
    actions = [line for line in first.export_audit_log() if '"request.approval"' in line]
    assert len(actions) == 1 and '"approvals_required":2' in actions[0].replace(" ", "")


def test_a_policy_of_three_officers_is_refused(world) -> None:
    north: Hospital = world["north"]
    error = _error(lambda: north.officers[0].set_approval_policy(north.dataset, max_epsilon=5, approvals_required=3, reason="x"))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT and [v.field for v in error.violations] == ["policy.approvals_required"]


def test_the_cli_sets_two_officer_approval(world) -> None:
    north: Hospital = world["north"]
    env = {"CLEANROOM_SERVER": world["running"].address, "CLEANROOM_TOKEN": north.tokens["officer 1"]}
    out = cli("privacy", "policy", north.dataset, "--max-epsilon", "5", "--approvals-required", "2", "--reason", "four eyes", env=env).stdout
    assert "two different officers" in out
    assert north.owner.get_budgets(north.dataset).policy.approvals_required == 2


def test_approving_the_whole_inbox_leaves_what_it_predicted(world) -> None:
    north: Hospital = world["north"]
    officer = north.officers[0]
    for n, eps in enumerate((1.5, 2.0, 1.0, 0.25)):  # the share's cap is 4: not all of them fit
        _submit(world, eps, f"jobs/{n}")
    page = officer.pending_page(page_size=2)
    [composition] = page.compositions
    assert composition.dataset == north.dataset and len(composition.included) + len(composition.not_fitting) == 4
    assert composition.not_fitting
    queue = [r.name for r in officer.pending_requests()]
    for name in queue:
        try:
            officer.approve(name, "the whole inbox")
        except CleanroomClientError as error:
            assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED and name in composition.not_fitting
        else:
            assert name in composition.included
    now = {b.name: (b.reserved.epsilon_exact, b.remaining.epsilon_exact, b.reserved.delta_exact)
           for b in officer.get_budgets(north.dataset).budgets}
    predicted = {b.name: (b.reserved.epsilon_exact, b.remaining.epsilon_exact, b.reserved.delta_exact)
                 for b in composition.remaining_after}
    assert now == predicted
    assert {r.name for r in officer.pending_requests()} == set(composition.not_fitting)  # a refused approval leaves it pending


def test_a_manufacturer_or_another_hospital_gets_no_inbox(world, tmp_path) -> None:
    running = world["running"]
    _submit(world, 1.0, "jobs/x")
    south = make_hospital(running, tmp_path, "South", world["maker"].id)
    try:
        page = south.officers[0].pending_page()
        assert list(page.requests) == [] and list(page.compositions) == []
    finally:
        south.close()
    _, maker_token = running.principal(Role.MANUFACTURER, "Other")
    with Client(running.address, maker_token) as maker:
        assert _error(lambda: maker.pending_page()).code is grpc.StatusCode.PERMISSION_DENIED
