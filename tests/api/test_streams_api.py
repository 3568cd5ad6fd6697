"""Streams over a real gRPC port: a stream upload and what it shows, then every bad input of issue #18
as the right status with field violations that name the field and never a value, before any
reservation (the ledger, the budgets and the job list unchanged) and storing nothing.

One server for the module: a hospital's small stream (8 patients, 30 minutes of 5 s readings of
heart rate, SpO2 and steps) and a small table, each shared with a manufacturer whose model is the
example 1-D CNN (examples/wellness-cnn1d: input (3 channels, 120 cells))."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from cleanroom.cli.main import main
from cleanroom.domain.identity import Role
from cleanroom.sdk import CleanroomClientError, Client, Site
from cleanroom.sdk.schema import Schema, parse_schema
from cleanroom.sdk.streams import stream_spec, window_spec
from cleanroom.sdk.verify import job_parameters, verify_job
from cleanroom.v1 import datasets_pb2, jobs_pb2, models_pb2
from tests.conftest import internal_calls, make_config, start_server
from tests.paths import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "wellness-cnn1d"
PATIENTS, READINGS, STEP = 8, 360, 5  # 30 minutes of 5 s readings each
START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
CANARY = "CANARY-PID-4471"
HEADER = ["pid", "time", "hr", "spo2", "spo2_unit", "steps", "event"]
COLUMNS = [
    {"name": "pid", "type": "string", "role": "patient_key"},
    {"name": "time", "type": "timestamp", "role": "time"},
    {"name": "hr", "type": "float", "role": "feature"},
    {"name": "spo2", "type": "float", "role": "feature"},
    {"name": "spo2_unit", "type": "string", "role": "unit"},
    {"name": "steps", "type": "float", "role": "feature"},
    {"name": "event", "type": "integer", "role": "label", "label_classes": 2},
]
STREAM = stream_spec("time", ["hr:bpm", "spo2:%:spo2_unit", "steps:steps/min"], resolution_seconds=STEP)
CHANNELS = ["hr", "spo2", "steps"]
RECIPE = dict(epochs=1, expected_batch_patients=4, learning_rate=0.1, optimizer="sgd", clipping_norm=1.0, validation_fraction=0.25)


def _time(at: datetime, zone: str = "+09:00") -> str:
    local = at.astimezone(datetime.strptime(zone.replace("Z", "+00:00"), "%z").tzinfo)
    return local.strftime("%Y-%m-%dT%H:%M:%S") + zone


def _readings() -> list[list[object]]:
    rows: list[list[object]] = []
    for p in range(PATIENTS):
        pid = CANARY if p == 0 else f"P{p:03d}"
        for i in range(READINGS):
            dip = p % 2 == 1 and 100 <= i < 130  # a 150 s desaturation in every other patient
            rows.append([pid, _time(START + timedelta(seconds=STEP * i)), 70 + p + i % 7, 86.0 if dip else 97.0, "%",
                         float(i % 3 * 20), int(dip)])
    return rows


def _write(path: Path, rows: list[list[object]], header: list[str] = HEADER) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _schema() -> Schema:
    return parse_schema({"k_anonymity": 2, "columns": [dict(c) for c in COLUMNS]})


def _table_schema() -> Schema:
    return parse_schema({"k_anonymity": 2, "columns": [
        {"name": "pid", "type": "string", "role": "patient_key"}, {"name": "hr", "type": "float", "role": "feature"},
        {"name": "spo2", "type": "float", "role": "feature"}, {"name": "steps", "type": "float", "role": "feature"},
        {"name": "event", "type": "integer", "role": "label", "label_classes": 2}]})


def _share(officer: Client, dataset: str, maker_id: str) -> None:
    officer.set_budget(dataset, epsilon=6, delta=1e-3, reason="total")
    officer.share_dataset(dataset, f"principals/{maker_id}", epsilon=5, delta=1e-3, reason="pilot")
    officer.set_approval_policy(dataset, max_epsilon=3, auto_approve_epsilon=1.5, reason="routine")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("streams")
    running = start_server(make_config(base / "state", work_dir=base / "work"))
    _, owner_token = running.principal(Role.DATA_OWNER)
    maker_id, maker_token = running.principal(Role.MANUFACTURER)
    _, officer_token = running.principal(Role.PRIVACY_OFFICER)
    owner, maker, officer = (running.client(t) for t in (owner_token, maker_token, officer_token))
    try:
        stream = owner.upload_dataset(_write(base / "vitals.csv", _readings()), _schema(), stream=STREAM)
        table_rows = [[f"P{p:03d}", 70.0 + p, 97.0, 10.0, p % 2] for p in range(PATIENTS)]
        table = owner.upload_dataset(_write(base / "table.csv", table_rows, ["pid", "hr", "spo2", "steps", "event"]), _table_schema())
        for dataset in (stream, table):
            _share(officer, dataset.name, maker_id)
        model = maker.submit_model(EXAMPLE)
        assert model.state == models_pb2.MODEL_STATE_ACCEPTED, model.intake_report
        yield {"running": running, "owner": owner, "maker": maker, "officer": officer, "base": base,
               "stream": stream, "table": table.name, "model": model, "owner_token": owner_token, "maker_token": maker_token}
    finally:
        for client in (owner, maker, officer):
            client.close()
        running.server.stop(grace=0)
        assert internal_calls(running.app) == {}, "a bad stream input was counted INTERNAL"


# --- the upload ----------------------------------------------------------------------------------


def test_a_stream_upload_reports_its_readings_and_shows_its_public_description(study: dict[str, Any]) -> None:
    stream: datasets_pb2.Dataset = study["stream"]
    summary = stream.intake_report.stream
    assert (summary.readings, summary.patients, summary.time_resolution_seconds, summary.time_zone) == (
        PATIENTS * READINGS, PATIENTS, STEP, "+09:00")
    assert summary.longest_span_seconds == summary.shortest_span_seconds == (READINGS - 1) * STEP
    assert [(c.channel, c.unit, c.readings) for c in summary.channels] == [
        ("hr", "bpm", PATIENTS * READINGS), ("spo2", "%", PATIENTS * READINGS), ("steps", "steps/min", PATIENTS * READINGS)]
    shown = study["maker"].get_dataset(stream.name)  # the manufacturer sees the schema and the description
    assert shown.stream == datasets_pb2.StreamDescription(
        time_column="time", time_resolution_seconds=STEP, longest_span_hours=0,
        channels=[datasets_pb2.ChannelUnit(channel=c, unit=u) for c, u in (("hr", "bpm"), ("spo2", "%"), ("steps", "steps/min"))])
    assert not shown.HasField("intake_report") and CANARY not in str(study["owner"].get_dataset(stream.name))


def _stream_rows(change: Callable[[list[list[object]]], None]) -> list[list[object]]:
    rows = _readings()
    change(rows)
    return rows


def _swap(rows: list[list[object]]) -> None:
    rows[10][1], rows[11][1] = rows[11][1], rows[10][1]


def _duplicate(rows: list[list[object]]) -> None:
    rows[READINGS + 5][1] = rows[READINGS + 4][1]


def _mixed_zones(rows: list[list[object]]) -> None:
    for i, row in enumerate(rows[READINGS:2 * READINGS]):  # the second patient's times in UTC
        row[1] = _time(START + timedelta(seconds=STEP * i), "Z")


def _unit_change(rows: list[list[object]]) -> None:
    rows[2 * READINGS + 7][4] = "ratio"


@pytest.mark.parametrize("change, field, words", [
    (_swap, "columns[time]", "out of order or duplicated"),
    (_duplicate, "columns[time]", "out of order or duplicated"),
    (_mixed_zones, "columns[time]", "different UTC offsets"),
    (_unit_change, "columns[spo2_unit]", "unit must not change mid-stream"),
])
def test_a_bad_stream_file_is_refused_naming_the_column_and_storing_nothing(
        study: dict[str, Any], change: Callable[[list[list[object]]], None], field: str, words: str) -> None:
    owner: Client = study["owner"]
    before = [d.name for d in owner.list_datasets()]
    rows = _stream_rows(change)
    path = _write(study["base"] / f"bad-{change.__name__}.csv", rows)
    with pytest.raises(CleanroomClientError) as raised:
        owner.upload_dataset(path, _schema(), stream=STREAM)
    error = raised.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT and "nothing was stored" in error.message
    assert [v.field for v in error.violations] == [field] and words in error.violations[0].description
    _no_values(error, {CANARY, "ratio", "+09:00", *(str(r[1]) for r in rows[:2 * READINGS])}, study["base"])
    assert [d.name for d in owner.list_datasets()] == before


def test_a_channel_that_is_no_column_is_refused_before_the_file_is_read(study: dict[str, Any]) -> None:
    path = _write(study["base"] / "ok.csv", _readings())
    bad = stream_spec("time", ["hr:bpm", "glucose:mg/dL"])
    with pytest.raises(CleanroomClientError) as raised:
        study["owner"].upload_dataset(path, _schema(), stream=bad)
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "stream.channels[glucose]" in [v.field for v in raised.value.violations]


def _no_values(error: CleanroomClientError, values: set[str], base: Path) -> None:
    """Neither a data value, nor a server path, nor a stack trace in what the caller reads."""
    said = " ".join([error.message, *(v.field + " " + v.description for v in error.violations)])
    for value in values:
        assert value not in said, f"the error shows a value: {value!r}"
    assert str(base) not in said and "Traceback" not in said


# --- windowed jobs ---------------------------------------------------------------------------------


def _spec(study: dict[str, Any], dataset: str | None = None, *, label: str = "", features: list[str] = CHANNELS) -> jobs_pb2.TrainingSpec:
    return jobs_pb2.TrainingSpec(model=study["model"].name, dataset=dataset or study["stream"].name, feature_columns=features,
                                 label_column=label, target_epsilon=1.0, target_delta=1e-5, max_rows_per_patient=4, **RECIPE)


def _cells(study: dict[str, Any]) -> int:
    return int(study["model"].input_shape[1])


def _fitting(study: dict[str, Any], **changes: Any) -> jobs_pb2.WindowSpec:
    cells = _cells(study)
    return window_spec(cells * STEP, cells * STEP // 2, STEP, **({"label_rule": "spo2 below 90 for 60"} | changes))


def _state(study: dict[str, Any]) -> tuple[object, ...]:
    """Everything a reservation or a stored job would change: the ledger and budgets of both datasets, the jobs."""
    officer, maker = study["officer"], study["maker"]
    datasets = (study["stream"].name, study["table"])
    ledgers = tuple(tuple(str(e) for e in officer.ledger(dataset=d)) for d in datasets)
    budgets = tuple(str(officer.get_budgets(d)) for d in datasets)
    return ledgers, budgets, tuple(j.name for j in maker.list_jobs())


def _refused(study: dict[str, Any], spec: jobs_pb2.TrainingSpec, windows: jobs_pb2.WindowSpec | None) -> dict[str, str]:
    before = _state(study)
    with pytest.raises(CleanroomClientError) as raised:
        study["maker"].train(spec, windows=windows)
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT and "nothing was reserved" in raised.value.message
    _no_values(raised.value, {CANARY, "97.0", "86.0"}, study["base"])
    assert _state(study) == before
    return {v.field: v.description for v in raised.value.violations}


def test_a_window_longer_than_any_patients_stream_is_refused(study: dict[str, Any]) -> None:
    long = window_spec(7200, 3600, STEP, label_rule="spo2 below 90 for 60")  # the longest span is under an hour
    found = _refused(study, _spec(study), long)
    assert "longer than any patient's stream (the longest spans 0 h)" in found["spec.windows.window_seconds"]


def test_a_label_rule_naming_a_missing_channel_is_refused(study: dict[str, Any]) -> None:
    found = _refused(study, _spec(study), _fitting(study, label_rule="glucose below 70 for 60"))
    assert found == {"spec.windows.label_rule.channel": "not a channel of this stream"}


def test_windows_on_a_table_are_refused(study: dict[str, Any]) -> None:
    found = _refused(study, _spec(study, study["table"], label="event"), _fitting(study, label_rule=None))
    assert "table, not a stream" in found["spec.windows"]


def test_a_stream_without_windows_is_refused(study: dict[str, Any]) -> None:
    found = _refused(study, _spec(study, label="event"), None)
    assert found == {"spec.windows": "this dataset is a stream: name its windows (window, stride and resample seconds)"}


def test_a_model_that_does_not_take_one_window_is_refused_in_words(study: dict[str, Any]) -> None:
    cells = _cells(study)
    found = _refused(study, _spec(study), window_spec(cells * STEP, resample_seconds=2 * STEP, label_rule="spo2 below 90 for 60"))
    assert found["spec.windows"].startswith(f"the model's input_shape is [3, {cells}], but these windows give [3, {cells // 2}]")
    found = _refused(study, _spec(study, features=["hr", "spo2"]), _fitting(study))
    assert f"[2, {cells}]: 2 channels (the feature columns)" in found["spec.windows"]


def test_a_feature_that_is_no_channel_and_a_label_that_is_no_label_are_refused(study: dict[str, Any]) -> None:
    found = _refused(study, _spec(study, features=["hr", "event", "steps"]), _fitting(study))
    assert found["spec.feature_columns[event]"] == "not a channel of this stream"
    found = _refused(study, _spec(study, label="hr"), _fitting(study, label_rule=None))
    assert "LABEL column" in found["spec.label_column"]


def test_a_cohort_of_streams_is_refused(study: dict[str, Any]) -> None:
    spec = _spec(study)
    spec.ClearField("dataset")
    before = _state(study)
    with pytest.raises(CleanroomClientError) as raised:
        study["maker"].train(spec, cohort=[Site(study["stream"].name), Site(study["table"], role="validate")],
                             windows=_fitting(study))
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in raised.value.violations] == [
        ("spec.cohort[0]", "a cohort over stream datasets is not supported yet: train or evaluate on one stream dataset")]
    assert _state(study) == before


def test_a_fitting_request_is_reserved_and_echoes_its_windows(study: dict[str, Any]) -> None:
    """The control: the same server takes a request whose windows fit (then it is cancelled)."""
    maker: Client = study["maker"]
    windows = _fitting(study)
    before = _state(study)
    job = maker.train(_spec(study), windows=windows)
    try:
        assert _state(study) != before  # what the refusals above left unchanged does change here
        assert job.state in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING), job
        assert job.training.windows == windows and job.training.label_column == ""
        assert maker.get_job(job.name).training.windows == windows
    finally:
        maker.cancel_job(job.name)
    evaluation = jobs_pb2.EvaluationSpec(model=study["model"].name, dataset=study["stream"].name, feature_columns=CHANNELS,
                                         label_column="event", target_epsilon=0.5, target_delta=1e-5, max_rows_per_patient=4)
    labelled = _fitting(study, label_rule=None)
    job = maker.evaluate(evaluation, windows=labelled)
    maker.cancel_job(job.name)
    assert job.evaluation.windows == labelled


def test_a_windowed_job_runs_to_its_release_and_its_receipt_verifies(study: dict[str, Any]) -> None:
    """The runner's job.json for a stream site reaches phase B in its sandbox; the receipt binds the windows."""
    maker: Client = study["maker"]
    spec = _spec(study)
    job = maker.train(spec, windows=_fitting(study))
    done = maker.wait_job(job.name, timeout=600)
    assert done.state == jobs_pb2.JOB_STATE_RELEASED, done
    files = maker.download_all(done)
    app = study["running"].app
    verified = verify_job(done, files, package_directory=EXAMPLE, pinned_root_pem=app.enclave.root.public_key_pem(),
                          allowed_measurements=[app.enclave.measurement], spec=spec)
    assert 0 < float(verified.report.epsilon_spent) <= 1.0 and "weights.safetensors" in files
    assert job_parameters(done)["windows"] == _fitting_json(study)


def _fitting_json(study: dict[str, Any]) -> dict[str, object]:
    cells = _cells(study)
    return {"window_seconds": cells * STEP, "stride_seconds": cells * STEP // 2, "resample_seconds": STEP, "min_coverage": "0.5",
            "label_rule": {"channel": "spo2", "comparison": "below", "threshold": "90.0", "for_seconds": 60}}


# --- the CLI over the same server --------------------------------------------------------------------

SCHEMA_TOML = "k_anonymity = 2\n" + "".join(
    f'[[columns]]\nname = "{c["name"]}"\ntype = "{c["type"]}"\nrole = "{c["role"]}"\n'
    + (f'label_classes = {c["label_classes"]}\n' if "label_classes" in c else "") for c in COLUMNS)


def _cli(study: dict[str, Any], token: str, *argv: str) -> int:
    return main(["--server", study["running"].address, "--token", token, *argv])


def test_the_cli_uploads_a_stream_shows_it_and_refuses_a_window_by_name(study: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    base: Path = study["base"]
    schema = base / "vitals.toml"
    schema.write_text(SCHEMA_TOML)
    csv_path = _write(base / "cli.csv", _readings())
    assert _cli(study, study["owner_token"], "dataset", "upload", str(csv_path), "--schema", str(schema), "--quiet",
                "--stream-time", "time", "--channel", "hr:bpm", "--channel", "spo2:%:spo2_unit", "--channel", "steps:steps/min",
                "--resolution", str(STEP)) == 0
    uploaded = capsys.readouterr().out
    assert f"{PATIENTS * READINGS:,} stored, {PATIENTS} patients" in uploaded and "spo2 (%): " in uploaded
    name = uploaded.split()[1]
    assert _cli(study, study["maker_token"], "dataset", "show", study["stream"].name) == 0
    shown = capsys.readouterr().out
    assert f"Stream: time column time, resolution {STEP} s, longest patient span 0 h" in shown and "steps (steps/min)" in shown
    assert _cli(study, study["maker_token"], "job", "train", "--model", study["model"].name, "--dataset", study["stream"].name,
                "--features", "hr,spo2,steps", "--epsilon", "1", "--window", "7200", "--resample", str(STEP),
                "--label-rule", "spo2 below 90 for 60") == 1
    refused = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in refused and "spec.windows.window_seconds: longer than any patient's stream" in refused
    study["owner"].delete_dataset(name)
