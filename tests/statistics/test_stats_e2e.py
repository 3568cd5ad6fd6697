"""DP statistics over gRPC with a real warm worker in bubblewrap: answers, receipts, ledger, bad input."""

from __future__ import annotations

import base64
import csv
import json
import statistics
import threading

import grpc
import pytest

import enclave_sim
from cleanroom.cli import main as cli
from cleanroom.cli import samples
from cleanroom.domain.idempotency import RequestKey
from cleanroom.domain.identity import Role
from cleanroom.domain.privacy import Privacy
from cleanroom.sdk import CleanroomClientError
from cleanroom.sdk.schema import Schema
from cleanroom.sdk.stats import verify_answer
from cleanroom.server.idempotency import JournalledIdempotency, fingerprint
from cleanroom.statistics.engine import Filter, Query
from cleanroom.statistics.pool import WorkerFailed
from cleanroom.storage import audit_repo, privacy_repo
from cleanroom.v1 import stats_pb2
from cleanroom.wire.stats import query_to_proto
from tests.conftest import internal_calls, make_config, start_server
from tests.tools import needs

pytestmark = needs("bwrap")  # the server's sandboxes (tests/tools.py)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("stats")
    # Allowances close when a test settles them, not on a slow machine's pause between two calls.
    running = start_server(make_config(base / "state", work_dir=base / "work", stats_allowance_idle=600.0))
    _, owner_token = running.principal(Role.DATA_OWNER)
    maker_id, maker_token = running.principal(Role.MANUFACTURER)
    _, stranger_token = running.principal(Role.MANUFACTURER)
    _, officer_token = running.principal(Role.PRIVACY_OFFICER)
    owner, maker, stranger, officer = (running.client(t) for t in (owner_token, maker_token, stranger_token, officer_token))
    source = samples.write_breast_cancer_csv(base / "bc.csv")
    dataset = owner.upload_dataset(source, Schema(samples.breast_cancer_schema(), 5))
    officer.set_budget(dataset.name, epsilon=20, delta=1e-4, reason="total")
    officer.share_dataset(dataset.name, f"principals/{maker_id}", epsilon=10, delta=1e-4, reason="pilot")
    officer.set_approval_policy(dataset.name, max_epsilon=5, auto_approve_epsilon=2, reason="routine")
    with source.open() as handle:
        radius = [float(row["mean_radius"]) for row in csv.DictReader(handle)]
    yield {"running": running, "maker_token": maker_token, "maker_id": maker_id, "maker": maker, "stranger": stranger, "officer": officer, "dataset": dataset.name,
           "true_mean_radius": statistics.fmean(radius), "rows": len(radius)}
    for client in (owner, maker, stranger, officer):
        client.close()
    running.server.stop(grace=0)
    # Bad queries above included: nothing this module sent was counted INTERNAL (the alert's counter).
    assert internal_calls(running.app) == {}, "calls counted INTERNAL in cleanroom_rpc_requests_total"


def _reservations(world) -> int:
    with world["running"].app.db.read() as session:
        return sum(1 for e in privacy_repo.events(session) if e.kind.value == "reserve")


def _answers(world) -> list:
    """Every answered query's audit entry, once the trailing records are written."""
    world["running"].app.stats.settle()
    with world["running"].app.db.read() as session:
        return [e for e in audit_repo.entries(session) if e.action == "stats.answer"]


def _settled_events(world) -> list:
    world["running"].app.stats.settle()  # closes open allowances: commits what they paid for
    with world["running"].app.db.read() as session:
        return privacy_repo.events(session)


def _key_releases(world) -> int:
    with world["running"].app.db.read() as session:
        return sum(1 for e in audit_repo.entries(session) if e.action == "broker.released")


def _metric(world, kind: str, outcome: str) -> float:
    registry = world["running"].app.metrics.registry
    return registry.get_sample_value("cleanroom_stats_queries_total", {"kind": kind, "outcome": outcome}) or 0.0


def _verify(world, answer):
    enclave = world["running"].app.enclave
    return verify_answer(answer, pinned_root_pem=enclave.root.public_key_pem(), allowed_measurements=[enclave.measurement])


MEAN = Query(kind="mean", column="mean_radius", bounds=(0.0, 40.0), epsilon=0.5)


def test_a_mean_is_answered_charged_once_and_carries_a_verifiable_receipt(world) -> None:
    maker = world["maker"]
    world["running"].app.stats.settle()
    answered = _metric(world, "mean", "answered")
    answer = maker.run_query(world["dataset"], MEAN)
    assert _metric(world, "mean", "answered") == answered + 1
    assert answer.epsilon == pytest.approx(0.5) and answer.delta == 0 and len(answer.cells) == 1
    cell = answer.cells[0]
    assert cell.statistic == "mean" and 0 < cell.half_width < 40
    assert abs(cell.value - world["true_mean_radius"]) <= max(3 * cell.half_width, 0.5)
    assert float(_verify(world, answer).report.epsilon_spent) == pytest.approx(0.5)
    commits = [e for e in _settled_events(world) if e.kind.value == "commit"]
    assert commits and commits[-1].amount.epsilon_value == pytest.approx(0.5)  # its allowance paid for this answer only
    recorded = _answers(world)[-1]
    assert recorded.details["spend"] == commits[-1].spend_id and recorded.details["epsilon"] == pytest.approx(0.5)
    tampered = stats_pb2.QueryAnswer()
    tampered.CopyFrom(answer)
    tampered.cells[0].value += 1.0
    with pytest.raises(enclave_sim.VerificationError):
        _verify(world, tampered)
    forged = stats_pb2.QueryAnswer()
    forged.CopyFrom(answer)
    forged.answer_json = answer.answer_json.replace(b'"mean"', b'"sum"', 1)
    with pytest.raises(enclave_sim.VerificationError):
        _verify(world, forged)


def test_the_warm_worker_answers_later_queries_without_a_new_key_release(world) -> None:
    maker, app = world["maker"], world["running"].app
    maker.run_query(world["dataset"], MEAN)
    before = _key_releases(world)
    dataset_id = world["dataset"].removeprefix("datasets/")
    assert dataset_id in app.stats_pool.warm_datasets()
    maker.run_query(world["dataset"], Query(kind="count", epsilon=0.2))
    assert _key_releases(world) == before  # the same attested worker, no second decryption
    assert app.stats_pool.reap(now=float("inf")) == 1  # idle past any limit: closed
    assert dataset_id not in app.stats_pool.warm_datasets()
    maker.run_query(world["dataset"], Query(kind="count", epsilon=0.2))
    assert _key_releases(world) == before + 1  # a fresh worker had to be attested again


def test_a_worker_that_never_got_the_key_costs_nothing(world, monkeypatch) -> None:
    app, maker = world["running"].app, world["maker"]
    app.stats.settle()
    app.stats_pool.reap(now=float("inf"))  # no warm worker: the next query must start one

    def refuse(*args, **kwargs):
        raise enclave_sim.AttestationError(enclave_sim.Reason.WRONG_MEASUREMENT, "refused in this test")

    monkeypatch.setattr(app.enclave, "release_to_sandbox", refuse)
    with pytest.raises(CleanroomClientError) as caught:
        maker.run_query(world["dataset"], Query(kind="count", epsilon=0.2))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    last = _settled_events(world)[-2:]
    assert [e.kind.value for e in last] == ["reserve", "refund"] and last[0].spend_id == last[1].spend_id
    assert last[0].amount == last[1].amount  # refunded whole: the data was never opened
    monkeypatch.undo()
    assert maker.run_query(world["dataset"], Query(kind="count", epsilon=0.2)).epsilon == pytest.approx(0.2)


def test_a_query_that_fails_after_its_data_was_opened_is_charged_and_recorded(world, monkeypatch) -> None:
    app, maker = world["running"].app, world["maker"]
    app.stats.settle()

    def opened_then_failed(dataset_id, source, workload, query, *, opening, stream_readings=0):
        opening()  # the data is touched for this query...
        raise WorkerFailed("worker")  # ...and then the worker dies

    monkeypatch.setattr(app.stats_pool, "ask", opened_then_failed)
    with pytest.raises(CleanroomClientError) as caught:
        maker.run_query(world["dataset"], Query(kind="count", epsilon=0.05))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    monkeypatch.undo()
    events = _settled_events(world)
    commit = events[-1] if events[-1].kind.value == "commit" else events[-2]
    assert commit.kind.value == "commit" and commit.amount.epsilon_value == pytest.approx(0.05)  # spent: the data was opened
    with app.db.read() as session:
        failed = [e for e in audit_repo.entries(session) if e.action == "stats.failed"][-1]
    assert failed.details["spend"] == commit.spend_id and failed.details["outcome"] == "UNAVAILABLE"


def test_groups_with_data_dependent_keys_are_released_only_above_the_threshold(world) -> None:
    answer = world["maker"].run_query(world["dataset"], Query(kind="count", group_by="visit_date", epsilon=1.0, delta=1e-6))
    keys = {tuple(c.key) for c in answer.cells}
    assert keys and keys <= {("2023",), ("2024",)}  # generalised visit years, nothing else
    assert answer.delta == pytest.approx(1e-6) and "threshold" in answer.mechanism
    assert sum(c.value for c in answer.cells) == pytest.approx(world["rows"], abs=60)
    _verify(world, answer)


def test_age_bands_are_a_public_key_space_answered_whole_without_delta(world) -> None:
    answer = world["maker"].run_query(world["dataset"], Query(kind="count", group_by="age", epsilon=0.5))
    bands = ["0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80+"]  # width 10, top code 80
    assert [c.key[0] for c in answer.cells] == bands  # empty bands too: their absence would tell nothing
    assert answer.delta == 0 and "threshold" not in answer.mechanism
    young = sum(c.value for c in answer.cells if c.key[0] in ("0-9", "10-19"))
    assert abs(young) < 40  # the synthetic ages start at 25: only noise there


def test_a_filtered_quantile_and_a_histogram_are_answered(world) -> None:
    maker = world["maker"]
    median = maker.run_query(world["dataset"], Query(kind="quantile", column="mean_radius", bounds=(0.0, 40.0), epsilon=0.5,
                                                     filters=(Filter("malignant", "==", 1),)))
    assert median.cells[0].unit == "rows" and 5 < median.cells[0].value < 30
    histogram = maker.run_query(world["dataset"], Query(kind="histogram", column="mean_radius", bins=(0, 10, 15, 20, 40), epsilon=0.5))
    assert [c.key[0] for c in histogram.cells] == ["[0.0, 10.0)", "[10.0, 15.0)", "[15.0, 20.0)", "[20.0, 40.0]"]


# Valid ranges, but shares the mechanisms cannot be calibrated for (issue 14 item 4): once answered
# INTERNAL and charged; now refused in words before any reservation, on the dry run too.
UNCALIBRATABLE = [
    (Query(kind="count", group_by="visit_date", epsilon=0.1, delta=1e-20), "delta"),
    (Query(kind="count", group_by="visit_date", epsilon=0.1, delta=1e-18), "delta"),
    (Query(kind="mean", column="mean_radius", estimate_bounds=True, bounds_epsilon=5e-324, epsilon=0.2), "bounds_epsilon"),
    (Query(kind="sum", column="mean_radius", bounds=(0.0, 40.0), epsilon=1e-300), "epsilon"),
]


@pytest.mark.parametrize("query, field", UNCALIBRATABLE)
def test_the_dry_run_refuses_what_the_mechanism_cannot_calibrate(world, query, field) -> None:
    before = _reservations(world)
    with pytest.raises(CleanroomClientError) as caught:
        world["maker"].estimate_query(world["dataset"], query)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in {v.field for v in caught.value.violations}
    assert _reservations(world) == before


def test_the_least_calibratable_delta_is_answered(world) -> None:
    estimate = world["maker"].estimate_query(world["dataset"], Query(kind="count", group_by="visit_date", epsilon=0.1, delta=1e-15))
    assert estimate.expected_error["select.threshold"] > 1


@pytest.mark.parametrize("query, field", [
    (Query(kind="mean", column="nope", bounds=(0.0, 1.0), epsilon=0.5), "column"),
    (Query(kind="mean", column="postcode", bounds=(0.0, 1.0), epsilon=0.5), "column"),
    (Query(kind="mean", column="mean_radius", epsilon=0.5), "bounds"),
    (Query(kind="mean", column="mean_radius", bounds=(40.0, 0.0), epsilon=0.5), "bounds"),
    (Query(kind="count", epsilon=0.0), "epsilon"),
    (Query(kind="count", epsilon=-1.0), "epsilon"),
    (Query(kind="count", filters=(Filter("patient_id", "==", "x"),), epsilon=0.5), "filters[0].column"),
    (Query(kind="count", group_by="mean_radius", epsilon=0.5, delta=1e-6), "group_by"),
    *[(q, f) for q, f in UNCALIBRATABLE],
])
def test_bad_queries_are_refused_before_any_reservation(world, query, field) -> None:
    app, dataset_id = world["running"].app, world["dataset"].removeprefix("datasets/")
    world["maker"].run_query(world["dataset"], Query(kind="count", epsilon=0.01))  # an allowance is open
    held = app.stats.held(dataset_id, world["maker_id"])
    before = _reservations(world)
    refused = _metric(world, query.kind, "answered")
    for _ in range(2):  # the second time too: a refusal is never remembered as checked
        with pytest.raises(CleanroomClientError) as caught:
            world["maker"].run_query(world["dataset"], query)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert field in {v.field for v in caught.value.violations}
    assert _reservations(world) == before and _metric(world, query.kind, "answered") == refused
    assert app.stats.held(dataset_id, world["maker_id"]) == held  # nothing drawn either


def test_a_dataset_not_shared_with_the_caller_looks_missing(world) -> None:
    before = _reservations(world)
    with pytest.raises(CleanroomClientError) as caught:
        world["stranger"].run_query(world["dataset"], MEAN)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert _reservations(world) == before


def test_the_dry_run_shows_cost_and_error_and_spends_nothing(world) -> None:
    before = _reservations(world)
    estimate = world["maker"].estimate_query(world["dataset"], Query(kind="count", group_by="visit_date", epsilon=1.0, delta=1e-6))
    assert estimate.epsilon == pytest.approx(1.0) and estimate.delta == pytest.approx(1e-6)
    assert estimate.expected_error["count"] > 0 and estimate.expected_error["select.threshold"] > 1
    assert estimate.budget.decision == "auto_approve" and estimate.budget.fits
    assert _reservations(world) == before


def test_a_retried_request_gets_the_first_answer_and_is_charged_once(world) -> None:
    before = len(_answers(world))
    first = world["maker"].run_query(world["dataset"], MEAN, request_id="stats-retry-1")
    again = world["maker"].run_query(world["dataset"], MEAN, request_id="stats-retry-1")  # from memory
    assert first == again and len(_answers(world)) == before + 1
    restarted = JournalledIdempotency(world["running"].app.db, world["running"].app.stats_journal)
    key = RequestKey(world["maker_id"], "RunQuery", "stats-retry-1")
    fingerprint_of = stats_pb2.RunQueryRequest(dataset=world["dataset"], query=query_to_proto(MEAN))
    stored = restarted.run(key, fingerprint(fingerprint_of), stats_pb2.QueryAnswer, lambda: pytest.fail("answered twice"))
    assert stored == first  # from the database, as after a restart


def test_concurrent_callers_are_each_charged_exactly_once(world) -> None:
    running, dataset = world["running"], world["dataset"]
    events_before, answers_before = len(_settled_events(world)), len(_answers(world))
    clients = [running.client(world["maker_token"]) for _ in range(4)]
    answers: list = []

    def ask(client) -> None:
        answers.extend(client.run_query(dataset, Query(kind="count", epsilon=0.01)) for _ in range(5))

    threads = [threading.Thread(target=ask, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for client in clients:
        client.close()
    assert len(answers) == 20
    new_events = _settled_events(world)[events_before:]
    committed = sum(e.amount.epsilon for e in new_events if e.kind.value == "commit")
    assert committed == 20 * Privacy.cost(0.01, 0).epsilon  # the allowances paid for exactly these answers
    assert len([e for e in new_events if e.kind.value == "reserve"]) < 20  # and not one reservation each
    assert len(_answers(world)) == answers_before + 20


def test_a_query_above_the_auto_approve_threshold_waits_for_an_officer(world) -> None:
    maker, officer = world["maker"], world["officer"]
    big = Query(kind="count", epsilon=3.0)
    with pytest.raises(CleanroomClientError) as caught:
        maker.run_query(world["dataset"], big)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    request_name = next(v.description for v in caught.value.violations if v.field == "privacy_request")
    with pytest.raises(CleanroomClientError):  # not yet approved
        maker.run_query(world["dataset"], big, privacy_request=request_name)
    officer.approve(request_name, reason="one-off population count")
    with pytest.raises(CleanroomClientError) as other:  # an approval covers its own query only
        maker.run_query(world["dataset"], Query(kind="count", epsilon=3.0, filters=(Filter("malignant", "==", 1),)),
                        privacy_request=request_name)
    assert other.value.code == grpc.StatusCode.FAILED_PRECONDITION
    answer = maker.run_query(world["dataset"], big, privacy_request=request_name)
    assert answer.epsilon == pytest.approx(3.0)
    with pytest.raises(CleanroomClientError):  # used once
        maker.run_query(world["dataset"], big, privacy_request=request_name)


def _cli(world, *args: str) -> list[str]:
    return ["--server", world["running"].address, "--token", world["maker_token"], "stats", *args]


def test_the_cli_prints_a_table_json_and_a_dry_run(world, capsys) -> None:
    dataset = world["dataset"]
    assert cli.main(_cli(world, "count", dataset, "--group-by", "age", "--epsilon", "0.5", "--delta", "1e-6",
                         "--where", "malignant == 1")) == 0
    table = capsys.readouterr().out
    assert "group" in table and "± (95%)" in table and "spent ε 0.5" in table
    assert cli.main(_cli(world, "mean", dataset, "--column", "mean_radius", "--bounds", "0", "40", "--epsilon", "0.3", "--json")) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["kind"] == "mean" and answer["epsilon"] == 0.3 and len(answer["cells"]) == 1
    before = _reservations(world)
    assert cli.main(_cli(world, "variance", dataset, "--column", "mean_radius", "--bounds", "0", "40", "--epsilon", "1", "--dry-run")) == 0
    dry = capsys.readouterr().out
    assert "cost ε 1" in dry and "sum_of_squares" in dry and _reservations(world) == before
    assert cli.main(_cli(world, "mean", dataset, "--column", "postcode", "--bounds", "0", "1", "--epsilon", "0.3")) == 1
    error = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in error and "numeric" in error and "Traceback" not in error


def _edit_base64(field: str, old: bytes, new: bytes):
    def edit(saved: dict) -> None:
        decoded = base64.b64decode(saved[field])
        assert old in decoded
        saved[field] = base64.b64encode(decoded.replace(old, new, 1)).decode()
    return edit


TAMPERINGS = {
    "a shown value": lambda saved: saved["cells"][0].update(value=saved["cells"][0]["value"] + 1),
    "the shown δ": lambda saved: saved.update(delta=0.5),  # outside the cells: unchecked before
    "the shown bound per patient": lambda saved: saved.update(rows_per_patient=50),
    "the signed bytes": _edit_base64("answer_json", b'"value":', b'"value":1'),
    "the receipt": _edit_base64("receipt", b'"accountant":"', b'"accountant":"x'),
    "the receipt, gone": lambda saved: saved.pop("receipt"),
}


def test_the_cli_verifies_a_statistics_receipt_now_and_later_and_refuses_a_tampered_one(world, tmp_path, capsys) -> None:
    running, root, saved = world["running"], tmp_path / "root.pem", tmp_path / "answer.json"
    assert cli.main(["--server", running.address, "--token", world["maker_token"], "trust", "show", "--pem"]) == 0
    root.write_text(capsys.readouterr().out)
    assert cli.main(_cli(world, "mean", world["dataset"], "--column", "mean_radius", "--bounds", "0", "40", "--epsilon", "0.2",
                         "--root-pem", str(root), "--save", str(saved))) == 0
    assert "receipt verified (simulated attestation)" in capsys.readouterr().out
    _, auditor = running.principal(Role.AUDITOR)  # an auditor checks what the manufacturer got
    verify = ["--server", running.address, "--token", auditor, "stats", "verify", "--root-pem", str(root)]
    assert cli.main([*verify, str(saved)]) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "receipt verified (simulated attestation): chains to the pinned root" in out
    answer = json.loads(saved.read_text())
    for what, change in TAMPERINGS.items():
        edited = json.loads(json.dumps(answer))
        change(edited)
        (tmp_path / "tampered.json").write_text(json.dumps(edited))
        assert cli.main([*verify, str(tmp_path / "tampered.json")]) == 6, what
        err = capsys.readouterr().err
        assert err.startswith("error: the receipt did NOT verify: ") and err.count("\n") == 1, (what, err)


def test_a_statistics_receipt_refuses_another_root_another_measurement_and_a_foreign_file(world, tmp_path, capsys) -> None:
    saved, other = tmp_path / "answer.json", tmp_path / "other.pem"
    assert cli.main(_cli(world, "count", world["dataset"], "--epsilon", "0.1", "--save", str(saved))) == 0
    other.write_bytes(enclave_sim.RootAuthority.load_or_create(tmp_path / "other-root").public_key_pem())
    root = tmp_path / "root.pem"
    root.write_bytes(world["running"].app.enclave.root.public_key_pem())
    (tmp_path / "foreign.json").write_text('{"not": "an answer"}')
    capsys.readouterr()
    for args, reason in (((str(saved), "--root-pem", str(other)), "UNTRUSTED_CERTIFICATE"),
                         ((str(saved), "--root-pem", str(root), "--measurement", "00" * 32), "WRONG_MEASUREMENT"),
                         ((str(tmp_path / "foreign.json"), "--root-pem", str(root)), "MALFORMED")):
        assert cli.main(_cli(world, "verify", *args)) == 6
        assert f"did NOT verify: {reason}" in capsys.readouterr().err


def test_the_dataset_policy_sets_the_per_patient_bound_when_a_query_does_not(world) -> None:
    maker, officer, dataset = world["maker"], world["officer"], world["dataset"]
    count = Query(kind="count", epsilon=0.2)
    narrow = maker.estimate_query(dataset, count).expected_error["count"]
    officer.set_approval_policy(dataset, max_epsilon=5, auto_approve_epsilon=2, reason="wearables", stats_rows_per_patient=4)
    try:
        assert maker.estimate_query(dataset, count).expected_error["count"] == pytest.approx(4 * narrow, rel=0.05)
        assert maker.run_query(dataset, count).rows_per_patient == 4
        assert maker.run_query(dataset, Query(kind="count", epsilon=0.2, max_rows_per_patient=2)).rows_per_patient == 2
    finally:
        officer.set_approval_policy(dataset, max_epsilon=5, auto_approve_epsilon=2, reason="routine")


# Last: it leaves the share nearly spent.
def test_an_exhausted_budget_refuses_with_resource_exhausted_and_reserves_nothing(world) -> None:
    maker, officer, dataset = world["maker"], world["officer"], world["dataset"]
    world["running"].app.stats.settle()  # no allowance holds budget: what is left is what the cap says
    share = next(b for b in maker.get_budgets(dataset).budgets if b.manufacturer)
    used = share.spent.epsilon + share.reserved.epsilon
    officer.set_budget(dataset, epsilon=used + 0.3, delta=1e-4, reason="nearly spent", manufacturer=share.manufacturer)
    before = _reservations(world)
    with pytest.raises(CleanroomClientError) as caught:
        maker.run_query(dataset, Query(kind="count", epsilon=1.0))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and caught.value.reason == "PRIVACY_BUDGET_EXHAUSTED"
    assert _reservations(world) == before
    assert maker.run_query(dataset, Query(kind="count", epsilon=0.25)).epsilon == pytest.approx(0.25)  # what is left still works
