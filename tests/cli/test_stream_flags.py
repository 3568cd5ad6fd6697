"""The CLI's stream flags: `dataset upload --stream-time/--channel/--resolution/--shift-days`, `job
train|evaluate --window/--stride/--resample/--min-coverage/--label-rule`, and how a stream dataset, its
intake summary and a windowed job are printed. Parsing only: no server is needed to refuse a flag."""

from __future__ import annotations

import argparse

import pytest

from cleanroom.cli import render
from cleanroom.cli import streams as cli_streams
from cleanroom.cli.jobs import spec_lines
from cleanroom.cli.main import build_parser, main
from cleanroom.sdk.schema import Schema, SchemaError
from cleanroom.sdk.streams import stream_spec
from cleanroom.v1 import datasets_pb2, jobs_pb2

JOB = ["job", "train", "--model", "models/m1", "--dataset", "datasets/d1", "--features", "hr,spo2,steps", "--epsilon", "1"]


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser({}).parse_args(argv)


def _upload(*flags: str) -> argparse.Namespace:
    return _parse(["dataset", "upload", "vitals.csv", "--schema", "s.toml", *flags])


def test_upload_flags_declare_the_stream() -> None:
    args = _upload("--stream-time", "time", "--channel", "hr:bpm", "--channel", "spo2:%:spo2_unit", "--resolution", "5",
                   "--shift-days", "30")
    assert cli_streams.upload_stream(args, Schema([])) == stream_spec("time", ["hr:bpm", "spo2:%:spo2_unit"], resolution_seconds=5,
                                                                      max_shift_days=30)


def test_upload_flags_replace_the_schemas_stream_and_without_them_the_schemas_is_sent() -> None:
    from_file = Schema([], 2, stream_spec("t", ["x:g"]))
    assert cli_streams.upload_stream(_upload(), from_file) == from_file.stream
    assert cli_streams.upload_stream(_upload(), Schema([])) is None  # a table
    flags = cli_streams.upload_stream(_upload("--stream-time", "time", "--channel", "hr:bpm"), from_file)
    assert flags == stream_spec("time", ["hr:bpm"])


@pytest.mark.parametrize("flags, words", [
    (["--channel", "hr:bpm"], "--stream-time"),
    (["--resolution", "5"], "--stream-time"),
    (["--stream-time", "time"], "at least one --channel"),
])
def test_incomplete_upload_flags_are_refused(flags: list[str], words: str) -> None:
    with pytest.raises(SchemaError, match=words):
        cli_streams.upload_stream(_upload(*flags), Schema([]))


def test_a_malformed_channel_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _upload("--stream-time", "time", "--channel", "hr")
    assert exited.value.code == 2 and "NAME:UNIT or NAME:UNIT:UNIT_COLUMN" in capsys.readouterr().err


def test_window_flags_become_the_jobs_windows() -> None:
    args = _parse([*JOB, "--window", "600", "--stride", "300", "--resample", "5", "--min-coverage", "0.8",
                   "--label-rule", "spo2 below 90 for 60"])
    windows = cli_streams.job_windows(args)
    assert windows == jobs_pb2.WindowSpec(window_seconds=600, stride_seconds=300, resample_seconds=5, min_coverage=0.8,
                                          label_rule=jobs_pb2.ThresholdLabel(channel="spo2", comparison="below", threshold=90,
                                                                             for_seconds=60))
    plain = cli_streams.job_windows(_parse([*JOB, "--label", "event", "--window", "60"]))
    assert plain == jobs_pb2.WindowSpec(window_seconds=60, stride_seconds=60, resample_seconds=1, min_coverage=0.5)
    assert cli_streams.job_windows(_parse([*JOB, "--label", "event"])) is None  # a table job


def test_a_malformed_label_rule_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _parse([*JOB, "--window", "600", "--label-rule", "spo2 under 90 for 60"])
    assert exited.value.code == 2 and "CHANNEL below|above THRESHOLD for SECONDS" in capsys.readouterr().err


@pytest.mark.parametrize("flags, code, words", [
    (["--label", "event", "--label-rule", "spo2 below 90 for 60", "--window", "600"], 2, "either --label or"),
    ([], 2, "either --label or"),
    (["--label-rule", "spo2 below 90 for 60"], 1, "give --window SECONDS too"),
    (["--label", "event", "--stride", "60"], 1, "give --window SECONDS too"),
])
def test_a_job_with_conflicting_label_or_window_flags_is_refused_before_any_call(
        flags: list[str], code: int, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", "127.0.0.1:9", *JOB, *flags]) == code  # nothing listens there: no call was made
    assert words in capsys.readouterr().err


def test_show_prints_the_stream_description_and_the_intake_summary() -> None:
    dataset = datasets_pb2.Dataset(name="datasets/d1", display_name="vitals", stream=datasets_pb2.StreamDescription(
        time_column="time", time_resolution_seconds=5, longest_span_hours=49,
        channels=[datasets_pb2.ChannelUnit(channel="hr", unit="bpm"), datasets_pb2.ChannelUnit(channel="spo2", unit="%")]))
    dataset.intake_report.stream.CopyFrom(datasets_pb2.StreamIntakeSummary(
        readings=12_000, patients=8, shortest_span_seconds=600, median_span_seconds=7200, longest_span_seconds=180_000, gaps=3,
        gap_seconds=60, readings_merged=40, time_resolution_seconds=5, max_shift_days=30, time_zone="+09:00",
        channels=[datasets_pb2.ChannelReadings(channel="hr", unit="bpm", readings=11_990)]))
    described = render.stream_description(dataset)
    assert "time column time, resolution 5 s, longest patient span 49 h" in described and "hr (bpm), spo2 (%)" in described
    report = render.intake_report(dataset)
    for words in ("12,000 stored, 8 patients; 40 merged", "shortest 600 s, median 2.0 h, longest 2.1 d", "3 pauses longer than 60 s",
                  "secret offset of up to 30 days; time zone +09:00", "hr (bpm): 11,990 readings"):
        assert words in report
    assert "readings" not in render.intake_report(datasets_pb2.Dataset(name="datasets/t"))  # a table's report has no stream part


def test_job_show_says_the_windows() -> None:
    rule = jobs_pb2.ThresholdLabel(channel="spo2", comparison="below", threshold=90, for_seconds=60)
    job = jobs_pb2.Job(training=jobs_pb2.TrainingSpec(windows=jobs_pb2.WindowSpec(
        window_seconds=600, stride_seconds=300, resample_seconds=5, min_coverage=0.5, label_rule=rule)))
    assert ("  windows           600 s every 300 s, resampled to 5 s cells (min coverage 0.5); label: spo2 below 90 for 60 s"
            in spec_lines(job))
    table = jobs_pb2.Job(training=jobs_pb2.TrainingSpec(label_column="event"))
    assert not any("windows" in line for line in spec_lines(table))
