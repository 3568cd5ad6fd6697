"""Stream statistics over gRPC with a real warm worker in bubblewrap: daily means per group, histograms
of readings and time in range, each through a stream view derived patient by patient from a sealed
stream table; per-patient bounds under a skewed patient; bad views refused before any reservation;
the view named in the ledger's reference, the audit entry and the receipt."""

from __future__ import annotations

import csv
import datetime as dt
import json

import grpc
import numpy as np
import pytest

from cleanroom.cli import main as cli
from cleanroom.crypto.sealed_table import SealedTable
from cleanroom.domain.identity import Role
from cleanroom.sdk import CleanroomClientError, Site
from cleanroom.sdk.schema import parse_schema
from cleanroom.sdk.stats import signed_stream_view, stream_view, verify_answer
from cleanroom.sdk.streams import stream_spec
from cleanroom.statistics.described import query_reference
from cleanroom.statistics.engine import Query
from cleanroom.statistics.engine.codec import canonical_query
from cleanroom.statistics.engine.row_bounding import bound_rows
from cleanroom.storage import audit_repo, dataset_repo, privacy_repo
from cleanroom.storage.blobs import BlobStore
from cleanroom.worker.stream_views import StreamLayout, derive
from tests.conftest import internal_calls, make_config, start_server
from tests.statistics import stream_world as sw
from tests.tools import needs

pytestmark = needs("bwrap")

PATIENTS = 400
DAYS_BOUND = 2  # max_rows_per_patient of the daily mean: a light patient's days


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("stream-stats")
    running = start_server(make_config(base / "state", work_dir=base / "work", stats_allowance_idle=600.0))
    app = running.app
    owner, _ = app.principals.create("Stream hospital", Role.DATA_OWNER, actor="test")
    maker_id, maker_token = running.principal(Role.MANUFACTURER)
    _, officer_token = running.principal(Role.PRIVACY_OFFICER)
    maker, officer = running.client(maker_token), running.client(officer_token)
    rng = np.random.default_rng(18)
    light = [sw.light_patient(i, rng) for i in range(PATIENTS)]
    heavy = sw.heavy_patient(100 * len(light[0].times))
    stream = sw.store_stream(app, owner, [*light, heavy])
    table = _table_dataset(running)
    uploaded = _uploaded_stream(running, base)
    for name in (stream.resource_name, table, uploaded["name"]):
        officer.set_budget(name, epsilon=20, delta=1e-4, reason="total")
        officer.share_dataset(name, f"principals/{maker_id}", epsilon=10, delta=1e-4, reason="pilot")
        officer.set_approval_policy(name, max_epsilon=5, auto_approve_epsilon=2, reason="routine")
    yield {"running": running, "app": app, "maker": maker, "officer": officer, "maker_id": maker_id, "maker_token": maker_token, "stream": stream,
           "table": table, "light": light, "heavy": heavy, "uploaded": uploaded}
    for client in (maker, officer):
        client.close()
    running.server.stop(grace=0)
    assert internal_calls(app) == {}, "calls counted INTERNAL in cleanroom_rpc_requests_total"


def _table_dataset(running) -> str:
    from cleanroom.cli import samples
    from cleanroom.sdk.schema import Schema

    _, token = running.principal(Role.DATA_OWNER)
    owner = running.client(token)
    path = samples.write_breast_cancer_csv(running.app.config.blob_dir.parent / "bc.csv")
    name = owner.upload_dataset(path, Schema(samples.breast_cancer_schema(), 5)).name
    owner.close()
    return name


def _uploaded_stream(running, base) -> dict[str, object]:
    """A stream through the real intake (CSV, SDK upload): 40 patients, two days of 10-minute readings."""
    _, token = running.principal(Role.DATA_OWNER)
    owner = running.client(token)
    rng = np.random.default_rng(7)
    rows, means = [], {}
    for p in range(40):
        arm = "ab"[p % 2]
        values = (70.0 if arm == "a" else 80.0) + rng.normal(0, 5, 288).round(1)
        for i, value in enumerate(values):
            at = dt.datetime(2026, 3, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=10 * i, seconds=p)
            rows.append([f"P{p:03d}", at.strftime("%Y-%m-%dT%H:%M:%SZ"), value, arm])
        means.setdefault(arm, []).extend([values[:144].mean(), values[144:].mean()])
    path = base / "uploaded.csv"
    with path.open("w", newline="") as out:
        csv.writer(out).writerows([["pid", "time", "hr", "arm"], *rows])
    schema = parse_schema({"k_anonymity": 2, "columns": [
        {"name": "pid", "type": "string", "role": "patient_key"}, {"name": "time", "type": "timestamp", "role": "time"},
        {"name": "hr", "type": "float", "role": "feature"},
        {"name": "arm", "type": "string", "role": "feature", "categories": ["a", "b"]}]})
    name = owner.upload_dataset(path, schema, stream=stream_spec("time", ["hr:bpm"], resolution_seconds=60)).name
    owner.close()
    return {"name": name, "daily_means": {arm: float(np.mean(m)) for arm, m in means.items()}}


def _reservations(world) -> int:
    with world["app"].db.read() as session:
        return sum(1 for e in privacy_repo.events(session) if e.kind.value == "reserve")


def _verify(world, answer):
    enclave = world["app"].enclave
    return verify_answer(answer, pinned_root_pem=enclave.root.public_key_pem(), allowed_measurements=[enclave.measurement])


def _by_group(answer) -> dict[str, object]:
    return {cell.key[0]: cell for cell in answer.cells}


DAILY = Query(kind="mean", column="heart_rate_daily_mean", group_by="arm", bounds=(30.0, 200.0), epsilon=2.0,
              max_rows_per_patient=DAYS_BOUND, stream_view=stream_view("daily_mean:heart_rate"))


def test_daily_means_per_group_are_near_the_exact_ones_and_the_heavy_patient_gives_its_bound(world) -> None:
    answer = world["maker"].run_query(world["stream"].resource_name, DAILY)
    assert answer.rows_per_patient == DAYS_BOUND and answer.epsilon == pytest.approx(2.0)
    heavy_days = len(sw.daily_means(world["heavy"]))
    assert heavy_days > DAYS_BOUND  # 100x the readings over more days: the bound keeps DAYS_BOUND of them
    for arm, cell in _by_group(answer).items():
        rows = [m for p in world["light"] if p.arm == arm for m in sw.daily_means(p)]
        if arm == "a":  # whichever days the bound keeps, each holds the same constant daily mean
            rows += [sw.HEAVY_HEART_RATE] * DAYS_BOUND
        exact = float(np.mean(rows))
        assert 0 < cell.half_width < 10
        assert abs(cell.value - exact) <= 3 * cell.half_width, (arm, cell.value, exact, cell.half_width)
    assert set(_by_group(answer)) == {"a", "b"}
    b, a = _by_group(answer)["b"], _by_group(answer)["a"]
    assert b.value > a.value - 3 * (a.half_width + b.half_width)  # arm b runs 10 bpm higher


def test_a_patient_with_100_times_the_readings_gives_no_more_rows_than_its_bound(world, tmp_path) -> None:
    """Counted in the derived table the worker builds and in the rows the engine keeps of it."""
    app, dataset = world["app"], world["stream"]
    with app.db.read() as session:
        wrapped = dataset_repo.wrapped_dataset_key(session, dataset.id)
    key = app.keys.unwrap_dataset_key(dataset.id, wrapped)
    layout = StreamLayout("patient", "time", 1, ("arm",))
    with BlobStore(app.config.blob_dir).open(dataset.id) as blob, SealedTable(blob, key, dataset.id) as sealed:
        readings = {span.patient: span.rows for span in sealed.spans}
        derived = derive(sealed.iter_patients(), sealed.schema, DAILY.stream_view, layout, rows=DAYS_BOUND)
    assert readings[sw.HEAVY] == 100 * readings["p0000"]
    per_patient = dict(zip(*np.unique(derived.column("patient").to_numpy(zero_copy_only=False), return_counts=True), strict=True))
    assert per_patient[sw.HEAVY] == len(sw.daily_means(world["heavy"])) and per_patient["p0000"] == DAYS_BOUND
    kept = bound_rows(derived, patient_column="patient", max_rows=DAYS_BOUND)
    counts = dict(zip(*np.unique(kept.column("patient").to_numpy(zero_copy_only=False), return_counts=True), strict=True))
    assert max(counts.values()) == DAYS_BOUND and counts[sw.HEAVY] == DAYS_BOUND
    # What the heavy patient's kept rows can move the arm's mean by: its bound's share, nothing more.
    light_a = [m for p in world["light"] if p.arm == "a" for m in sw.daily_means(p)]
    worst = DAYS_BOUND * (200.0 - 30.0) / (len(light_a) + DAYS_BOUND)
    assert abs(np.mean([*light_a, *[sw.HEAVY_HEART_RATE] * DAYS_BOUND]) - np.mean(light_a)) <= worst


def test_a_histogram_of_readings_draws_at_most_the_bound_per_patient(world) -> None:
    bins = (40.0, 60.0, 70.0, 80.0, 200.0)
    rows = 20
    query = Query(kind="histogram", column="heart_rate", bins=bins, epsilon=1.0, max_rows_per_patient=rows,
                  stream_view=stream_view("readings:heart_rate"))
    answer = world["maker"].run_query(world["stream"].resource_name, query)
    assert answer.rows_per_patient == rows
    patients = [*world["light"], world["heavy"]]
    # The exact value of a uniform draw of `rows` readings per patient is its expectation; the draw's own
    # spread (a few tens of readings per bin) is well inside three half-widths of the noise.
    for cell in answer.cells:
        low, high = (float(x) for x in cell.key[0].strip("[)]").split(","))
        expected = sum(rows * float(np.mean((p.heart_rate >= low) & (p.heart_rate < high))) for p in patients)
        assert abs(cell.value - expected) <= 3 * cell.half_width, (cell.key, cell.value, expected, cell.half_width)
    total = sum(cell.value for cell in answer.cells)
    assert abs(total - rows * len(patients)) <= 3 * sum(cell.half_width for cell in answer.cells)


def test_time_in_range_per_group_is_near_the_exact_share(world) -> None:
    query = Query(kind="mean", column="spo2_time_in_range", group_by="arm", bounds=(0.0, 1.0), epsilon=1.0,
                  stream_view=stream_view("time_in_range:spo2:94:100"))
    answer = world["maker"].run_query(world["stream"].resource_name, query)
    assert answer.rows_per_patient == 1
    cells = _by_group(answer)
    for arm in ("a", "b"):
        patients = [p for p in (*world["light"], world["heavy"]) if p.arm == arm]
        exact = float(np.mean([sw.time_in_range(p, 94.0, 100.0) for p in patients]))
        assert abs(cells[arm].value - exact) <= 3 * cells[arm].half_width + 1e-3, (arm, cells[arm].value, exact)
    assert cells["a"].value > cells["b"].value  # arm a's SpO2 runs higher: far apart next to the noise


BAD = [
    ("table", Query(kind="mean", column="mean_radius", bounds=(0.0, 40.0), epsilon=0.5,
                    stream_view=stream_view("daily_mean:mean_radius")), "stream_view"),
    ("stream", Query(kind="mean", column="heart_rate", bounds=(30.0, 200.0), epsilon=0.5), "stream_view"),
    ("stream", Query(kind="mean", column="glucose_daily_mean", bounds=(0.0, 400.0), epsilon=0.5,
                     stream_view=stream_view("daily_mean:glucose")), "stream_view.channel"),
    ("stream", Query(kind="mean", column="spo2_time_in_range", bounds=(0.0, 1.0), epsilon=0.5,
                     stream_view=stream_view("time_in_range:spo2:100:90")), "stream_view.low"),
    ("stream", Query(kind="mean", column="heart_rate", bounds=(30.0, 200.0), epsilon=0.5,
                     stream_view=stream_view("daily_mean:heart_rate")), "column"),  # the view's column is heart_rate_daily_mean
]


@pytest.mark.parametrize(("target", "query", "field"), BAD)
def test_bad_stream_queries_are_refused_before_any_reservation(world, target, query, field) -> None:
    app = world["app"]
    name = world["stream"].resource_name if target == "stream" else world["table"]
    held = app.stats.held(name.removeprefix("datasets/"), world["maker_id"])
    before = _reservations(world)
    for call in (world["maker"].run_query, world["maker"].estimate_query):
        with pytest.raises(CleanroomClientError) as caught:
            call(name, query)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert field in {v.field for v in caught.value.violations}
    assert _reservations(world) == before
    assert app.stats.held(name.removeprefix("datasets/"), world["maker_id"]) == held


def test_a_cohort_with_a_stream_site_is_refused_before_any_reservation(world) -> None:
    before = _reservations(world)
    sites = [Site(world["stream"].resource_name), Site(world["uploaded"]["name"])]
    for query in (DAILY, Query(kind="count", epsilon=0.5)):
        with pytest.raises(CleanroomClientError) as caught:
            world["maker"].run_query("", query, cohort=sites)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert {v.field for v in caught.value.violations} == {"cohort"}
    assert _reservations(world) == before


def test_the_receipt_and_the_records_name_the_view(world) -> None:
    app, dataset = world["app"], world["stream"]
    query = Query(kind="count", epsilon=0.3, max_rows_per_patient=1, stream_view=stream_view("time_in_range:heart_rate:50:90"))
    estimate = world["maker"].estimate_query(dataset.resource_name, query)
    assert estimate.epsilon == pytest.approx(0.3)
    answer = world["maker"].run_query(dataset.resource_name, query)
    verified = _verify(world, answer)
    assert signed_stream_view(verified) == "time_in_range:heart_rate:50:90"
    assert abs(answer.cells[0].value - (PATIENTS + 1)) <= 3 * answer.cells[0].half_width  # one row per patient
    app.stats.settle()
    with app.db.read() as session:
        entries = [e for e in audit_repo.entries(session) if e.action == "stats.answer"]
    recorded = entries[-1]
    assert recorded.details["stream_view"] == "time_in_range:heart_rate:50:90"
    # The ledger's reference and the receipt's query digest bind the view: another view is another query.
    reference = query_reference(dataset.id, canonical_query(query))
    other = query_reference(dataset.id, canonical_query(Query(kind="count", epsilon=0.3, max_rows_per_patient=1,
                                                               stream_view=stream_view("daily_mean:heart_rate"))))
    assert recorded.target.endswith(reference) and reference != other


def test_an_approved_stream_query_s_reservation_names_its_view(world) -> None:
    """Above the auto-approve threshold a query has a reservation of its own: its ledger entry names the view."""
    name = world["stream"].resource_name
    big = Query(kind="mean", column="heart_rate", bounds=(30.0, 200.0), epsilon=3.0, max_rows_per_patient=5,
                stream_view=stream_view("readings:heart_rate"))
    with pytest.raises(CleanroomClientError) as caught:
        world["maker"].run_query(name, big)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    request = next(v.description for v in caught.value.violations if v.field == "privacy_request")
    world["officer"].approve(request, reason="population heart rate")
    answer = world["maker"].run_query(name, big, privacy_request=request)
    assert signed_stream_view(_verify(world, answer)) == "readings:heart_rate"
    with world["app"].db.read() as session:
        spends = [privacy_repo.get_spend(session, e.spend_id) for e in privacy_repo.events(session) if e.kind.value == "commit"]
    spend = next(s for s in spends if s is not None and s.reference == query_reference(world["stream"].id, canonical_query(big)))
    assert spend.mechanism is not None and spend.mechanism.name == "stats-mean[readings:heart_rate]"
    assert spend.committed.epsilon_value == pytest.approx(3.0)


def test_a_stream_from_the_real_intake_answers_the_cli_s_daily_mean_per_group(world, capsys) -> None:
    uploaded = world["uploaded"]
    argv = ["--server", world["running"].address, "--token", world["maker_token"], "stats", "mean", uploaded["name"],
            "--stream-view", "daily_mean:hr", "--column", "hr_daily_mean", "--group-by", "arm", "--bounds", "40", "110",
            "--rows-per-patient", "2", "--where", "day <= 1", "--epsilon", "2", "--json"]
    assert cli.main(argv) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["rows_per_patient"] == 2 and {c["key"][0] for c in answer["cells"]} == {"a", "b"}
    for cell in answer["cells"]:
        exact = uploaded["daily_means"][cell["key"][0]]
        assert abs(cell["value"] - exact) <= 3 * cell["half_width"], (cell, exact)
    assert cli.main([*argv[:7], "--stream-view", "daily_mean:glucose", *argv[9:-1]]) == 1
    error = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in error and "stream_view.channel" in error and "Traceback" not in error
    with pytest.raises(SystemExit) as parsed:  # refused by the parser, nothing sent
        cli.main([*argv[:7], "--stream-view", "weekly", *argv[9:]])
    assert parsed.value.code == 2
    assert "KIND:CHANNEL" in capsys.readouterr().err


def test_a_stream_answer_may_take_longer_by_its_readings(world, monkeypatch) -> None:
    """The first query on a view derives it from every reading: its time limit grows with the
    stream's stored readings, so a large stream is not cut off mid-derivation (its budget spent)."""
    from cleanroom.statistics import pool

    assert pool.answer_seconds(0) == pool.QUERY_SECONDS
    assert pool.answer_seconds(600_000_000) >= pool.QUERY_SECONDS + 600
    limits: list[float] = []
    ask_live = pool.StatsWorkerPool._ask_live

    def recording(self, dataset_id, warm, query, timeout):
        limits.append(timeout)
        return ask_live(self, dataset_id, warm, query, timeout)

    monkeypatch.setattr(pool.StatsWorkerPool, "_ask_live", recording)
    world["maker"].run_query(world["stream"].resource_name, DAILY)
    world["maker"].run_query(world["table"], Query(kind="count", epsilon=0.5))
    readings = world["stream"].row_count
    assert readings > 0 and limits == [pool.answer_seconds(readings), pool.QUERY_SECONDS]
