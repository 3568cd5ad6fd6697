"""The privacy officer's controls end to end over gRPC, and reconciliation after a SIGKILL."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.identity import Role
from cleanroom.domain.privacy import Privacy
from cleanroom.privacy.ledger import SpendRequest
from cleanroom.sdk import CleanroomClientError, Client
from tests.api.test_datasets_api import _rows, _schema, _write_csv
from tests.server.test_server_process import _spawn_server, cli
from tests.tools import needs


@pytest.fixture
def parties(running, tmp_path):
    """A hospital's dataset, an officer, two manufacturers (one shared), clients for each."""
    _, owner_token = running.principal(Role.DATA_OWNER, "Hospital")
    _, officer_token = running.principal(Role.PRIVACY_OFFICER, "Officer")
    maker_id, maker_token = running.principal(Role.MANUFACTURER, "Acme")
    other_id, other_token = running.principal(Role.MANUFACTURER, "Rival")
    with Client(running.address, owner_token) as owner:
        dataset = owner.upload_dataset(_write_csv(tmp_path / "d.csv", _rows(40, 2)), _schema())
    clients = {name: Client(running.address, token) for name, token in
               (("officer", officer_token), ("maker", maker_token), ("other", other_token), ("owner", owner_token))}
    officer = clients["officer"]
    officer.set_budget(dataset.name, epsilon=10, delta=1e-5, reason="hospital total")
    officer.share_dataset(dataset.name, f"principals/{maker_id}", epsilon=4, delta=1e-5, reason="pilot")
    yield {"dataset": dataset.name, "dataset_id": dataset.name.removeprefix("datasets/"), "maker_id": maker_id,
           "other_id": other_id, "running": running, **clients}
    for client in clients.values():
        client.close()


def _error(call) -> CleanroomClientError:
    with pytest.raises(CleanroomClientError) as err:
        call()
    assert "Traceback" not in str(err.value)
    return err.value


def test_shared_manufacturer_sees_schema_and_own_budget_only(parties) -> None:
    maker, other = parties["maker"], parties["other"]
    shared = maker.get_dataset(parties["dataset"])
    assert shared.columns and not shared.HasField("intake_report") and shared.row_count == 0
    assert [d.name for d in maker.list_datasets()] == [parties["dataset"]]
    report = maker.get_budgets(parties["dataset"])
    assert [b.manufacturer for b in report.budgets] == [f"principals/{parties['maker_id']}"]
    assert _error(lambda: other.get_dataset(parties["dataset"])).code is grpc.StatusCode.NOT_FOUND
    assert _error(lambda: other.get_budgets(parties["dataset"])).code is grpc.StatusCode.NOT_FOUND
    assert list(other.list_datasets()) == []


def test_officer_sees_every_budget_with_bars(parties) -> None:
    report = parties["officer"].get_budgets(parties["dataset"])
    assert {b.name for b in report.budgets} == {parties["dataset"], f"{parties['dataset']}/manufacturers/{parties['maker_id']}"}
    whole = next(b for b in report.budgets if not b.manufacturer)
    assert whole.cap.epsilon == 10 and whole.cap.epsilon_exact == "10"
    assert report.policy.effective_max_delta == pytest.approx(1 / (10 * 40))


def test_estimate_is_own_budget_only_for_manufacturers(parties) -> None:
    estimate = parties["maker"].estimate_cost(parties["dataset"], epsilon=1, delta=1e-6)
    assert estimate.decision == "needs_approval" and estimate.fits
    assert [b.name for b in estimate.remaining_before] == [f"{parties['dataset']}/manufacturers/{parties['maker_id']}"]
    assert estimate.remaining_after[0].remaining.epsilon == pytest.approx(3)
    error = _error(lambda: parties["maker"].estimate_cost(parties["dataset"], epsilon=1, delta=1e-6, manufacturer=f"principals/{parties['other_id']}"))
    assert error.code is grpc.StatusCode.NOT_FOUND
    officer_view = parties["officer"].estimate_cost(parties["dataset"], epsilon=5, delta=1e-6, manufacturer=f"principals/{parties['maker_id']}")
    assert not officer_view.fits and len(officer_view.remaining_before) == 2


def test_pending_approve_reject_and_exhaustion(parties) -> None:
    app, officer = parties["running"].app, parties["officer"]
    maker = app.principals.get(parties["maker_id"])
    submit = lambda eps: app.approvals.submit(maker, SpendRequest(parties["dataset_id"], maker.id, "training", "jobs/x", Privacy.cost(eps, 1e-6)))  # noqa: E731
    first, second, third = submit(3), submit(0.5), submit(2)
    pending = list(officer.pending_requests())
    assert [p.name for p in pending] == sorted([first.resource_name, second.resource_name, third.resource_name])
    line = next(p for p in pending if p.name == first.resource_name)
    assert min(b.remaining.epsilon for b in line.remaining_after) == pytest.approx(1)
    assert officer.approve(first.resource_name, "looks fine").state == "approved"
    assert _error(lambda: officer.approve(first.resource_name, "again")).code is grpc.StatusCode.FAILED_PRECONDITION
    assert officer.reject(second.resource_name, "not needed").state == "rejected"
    exhausted = _error(lambda: officer.approve(third.resource_name, "over budget"))
    assert exhausted.code is grpc.StatusCode.RESOURCE_EXHAUSTED and exhausted.reason == "PRIVACY_BUDGET_EXHAUSTED"
    assert exhausted.violations and exhausted.violations[0].field.startswith(parties["dataset"])
    assert [p.name for p in officer.pending_requests()] == [third.resource_name]  # still pending, nothing reserved
    kinds = [e.kind for e in officer.ledger(dataset=parties["dataset"])]
    assert kinds.count("reserve") == 1


def test_auto_approval_within_threshold(parties) -> None:
    app, officer = parties["running"].app, parties["officer"]
    officer.set_approval_policy(parties["dataset"], max_epsilon=3, auto_approve_epsilon=1, reason="routine work")
    maker = app.principals.get(parties["maker_id"])
    small = app.approvals.submit(maker, SpendRequest(parties["dataset_id"], maker.id, "statistics", "q/1", Privacy.cost(0.5, 0)))
    assert small.state.value == "approved" and small.spend_id
    with pytest.raises(CleanroomError) as refused:
        app.approvals.submit(maker, SpendRequest(parties["dataset_id"], maker.id, "training", "jobs/big", Privacy.cost(3.5, 1e-6)))
    assert refused.value.code is ErrorCode.POLICY_REFUSED and "per-request limit" in refused.value.message


@pytest.mark.parametrize("epsilon, delta, field", [
    (0, 1e-6, "cap.epsilon"), (-1, 1e-6, "cap.epsilon"), (math.nan, 1e-6, "cap.epsilon"),
    (math.inf, 1e-6, "cap.epsilon"), (1, 0, "cap.delta"), (1, 1, "cap.delta"), (1, -1e-9, "cap.delta"),
])
def test_bad_privacy_parameters(parties, epsilon, delta, field) -> None:
    error = _error(lambda: parties["officer"].set_budget(parties["dataset"], epsilon=epsilon, delta=delta, reason="x"))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT and field in [v.field for v in error.violations]


def test_bad_targets(parties) -> None:
    officer = parties["officer"]
    assert _error(lambda: officer.set_budget("datasets/nope", epsilon=1, delta=1e-6, reason="x")).code is grpc.StatusCode.NOT_FOUND
    assert _error(lambda: officer.share_dataset(parties["dataset"], "principals/nobody", epsilon=1, delta=1e-6, reason="x")).code is grpc.StatusCode.NOT_FOUND
    assert _error(lambda: officer.set_budget(parties["dataset"], epsilon=1, delta=1e-6, reason=" ")).code is grpc.StatusCode.INVALID_ARGUMENT
    assert _error(lambda: officer.set_budget("not-a-name", epsilon=1, delta=1e-6, reason="x")).code is grpc.StatusCode.INVALID_ARGUMENT


def test_budget_below_spent_is_refused(parties) -> None:
    app, officer = parties["running"].app, parties["officer"]
    app.ledger.reserve(SpendRequest(parties["dataset_id"], parties["maker_id"], "training", "j", Privacy.cost(3, 1e-6)), actor_id="system")
    error = _error(lambda: officer.set_budget(parties["dataset"], epsilon=2, delta=1e-5, reason="tighten"))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert parties["officer"].get_budgets(parties["dataset"]).budgets[0].cap.epsilon == 10


def test_audit_verify_and_export_over_grpc(parties) -> None:
    officer, owner = parties["officer"], parties["owner"]
    verdict = officer.verify_audit_log()
    assert verdict.ok and verdict.entries >= 4
    lines = list(officer.export_audit_log())
    assert len(lines) == verdict.entries
    own = list(owner.export_audit_log())
    # The hospital reads its dataset's entries and those about its own principals and organisation.
    assert own and all(parties["dataset"] in line or '"target":"principals/' in line or '"target":"organisations/' in line
                       for line in own)
    assert _error(lambda: parties["maker"].verify_audit_log()).code is grpc.StatusCode.PERMISSION_DENIED


def test_cli_budget_table(parties) -> None:
    running = parties["running"]
    _, token = running.principal(Role.PRIVACY_OFFICER)
    env = {"CLEANROOM_SERVER": running.address, "CLEANROOM_TOKEN": token}
    shown = cli("privacy", "show", parties["dataset"], env=env).stdout
    assert "(whole dataset)" in shown and "Acme" in shown and "█" in shown
    assert "audit log intact" in cli("audit", "verify", env=env).stdout


@needs("bwrap")
def test_sigkill_between_reserve_and_commit_reconciles_on_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    admin_token = cli("admin", "bootstrap", "--state-dir", str(state)).stdout.strip()
    process, address = _spawn_server(state)
    with Client(address, admin_token) as admin:
        tokens = {role: admin.create_principal(role, role).token for role in ("data_owner", "privacy_officer", "manufacturer")}
    with Client(address, tokens["data_owner"]) as owner:
        dataset = owner.upload_dataset(_write_csv(tmp_path / "d.csv", _rows(40, 2)), _schema())
    with Client(address, tokens["manufacturer"]) as maker:
        maker_name = maker.whoami().name
    with Client(address, tokens["privacy_officer"]) as officer:
        officer.set_budget(dataset.name, epsilon=10, delta=1e-5, reason="total")
        officer.share_dataset(dataset.name, maker_name, epsilon=10, delta=1e-5, reason="pilot")
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)

    driver = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_driver", "--state-dir", str(state), "--dataset", dataset.name.removeprefix("datasets/"),
         "--manufacturer", maker_name.removeprefix("principals/")],
        stdout=subprocess.PIPE, text=True,
    )
    assert driver.stdout.readline().strip() == "READY"  # type: ignore[union-attr]
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=10)

    for _restart in range(2):  # reconciling twice must not count twice
        process, address = _spawn_server(state)
        try:
            with Client(address, tokens["privacy_officer"]) as officer:
                whole = next(b for b in officer.get_budgets(dataset.name).budgets if not b.manufacturer)
                events = [(e.kind, e.amount.epsilon, e.reason) for e in officer.ledger(dataset=dataset.name)]
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        assert whole.reserved.epsilon == 0 and whole.spent.epsilon == pytest.approx(1.5)
        assert events.count(("commit", 1.5, "reconciled at start-up")) == 1
        assert events.count(("refund", 1.5, "reconciled at start-up")) == 1
