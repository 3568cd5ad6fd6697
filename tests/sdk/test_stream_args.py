"""The SDK's stream helpers: channels as NAME:UNIT[:UNIT_COLUMN], the schema file's [stream] table,
threshold label rules in words, and the windows a job sends."""

from __future__ import annotations

import tomllib

import pytest

from cleanroom.domain.streams import ThresholdLabel, WindowSpec
from cleanroom.sdk.schema import SchemaError, parse_schema
from cleanroom.sdk.streams import parse_channel, parse_label_rule, set_windows, stream_spec, window_spec
from cleanroom.v1 import datasets_pb2, jobs_pb2

SCHEMA = """
k_anonymity = 2
[[columns]]
name = "pid"
type = "string"
role = "patient_key"
[[columns]]
name = "time"
type = "timestamp"
role = "time"
[[columns]]
name = "spo2"
type = "float"
role = "feature"
[[columns]]
name = "spo2_unit"
type = "string"
role = "unit"

[stream]
time_column = "time"
channels = ["spo2:%:spo2_unit", { name = "hr", unit = "bpm" }]
time_resolution_seconds = 5
max_shift_days = 30
"""


def test_a_channel_names_its_unit_and_optionally_its_unit_column() -> None:
    assert parse_channel("hr:bpm") == datasets_pb2.ChannelSpec(name="hr", unit="bpm")
    assert parse_channel("spo2:%:spo2_unit") == datasets_pb2.ChannelSpec(name="spo2", unit="%", unit_column="spo2_unit")
    assert parse_channel(" acc : m/s2 ") == datasets_pb2.ChannelSpec(name="acc", unit="m/s2")


@pytest.mark.parametrize("text", ["hr", "hr:", ":bpm", "hr:bpm:", "a:b:c:d", ""])
def test_a_malformed_channel_is_refused_with_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="NAME:UNIT or NAME:UNIT:UNIT_COLUMN"):
        parse_channel(text)


def test_the_schema_files_stream_table_becomes_the_uploads_stream() -> None:
    schema = parse_schema(tomllib.loads(SCHEMA))
    assert schema.stream == datasets_pb2.StreamSpec(
        time_column="time", time_resolution_seconds=5, max_shift_days=30,
        channels=[datasets_pb2.ChannelSpec(name="spo2", unit="%", unit_column="spo2_unit"), datasets_pb2.ChannelSpec(name="hr", unit="bpm")])
    assert [c.type for c in schema.columns][1] == datasets_pb2.TIMESTAMP
    assert parse_schema({"columns": tomllib.loads(SCHEMA)["columns"]}).stream is None  # a table


@pytest.mark.parametrize("stream, words", [
    ({"time_column": "t"}, "stream.channels must be a non-empty list"),
    ({"time_column": "t", "channels": ["hr"]}, "NAME:UNIT"),
    ({"time_column": "t", "channels": ["hr:bpm"], "resolution": 5}, "unknown keys resolution"),
    ({"time_column": "t", "channels": ["hr:bpm"], "max_shift_days": "30"}, "max_shift_days must be a whole number"),
    ({"time_column": "t", "channels": [{"name": "hr", "units": "bpm"}]}, "not units"),
    ("time", "stream must be a table"),
])
def test_a_bad_stream_table_is_a_schema_error(stream: object, words: str) -> None:
    data = tomllib.loads(SCHEMA)
    data["stream"] = stream
    with pytest.raises(SchemaError, match=words):
        parse_schema(data)


def test_stream_spec_defaults_to_one_second_and_no_shift() -> None:
    assert stream_spec("t", ["hr:bpm"]) == datasets_pb2.StreamSpec(
        time_column="t", channels=[datasets_pb2.ChannelSpec(name="hr", unit="bpm")], time_resolution_seconds=1)


@pytest.mark.parametrize("text, rule", [
    ("spo2 below 90 for 60", ThresholdLabel("spo2", "below", 90.0, 60)),
    ("hr ABOVE 120.5 for 30s", ThresholdLabel("hr", "above", 120.5, 30)),
    ("  spo2   below  -1e1 for 5 ", ThresholdLabel("spo2", "below", -10.0, 5)),
])
def test_a_label_rule_in_words(text: str, rule: ThresholdLabel) -> None:
    assert parse_label_rule(text) == rule


@pytest.mark.parametrize("text", ["spo2 under 90 for 60", "spo2 below 90", "spo2 below ninety for 60", "spo2 below 90 for 1.5",
                                  "spo2 below nan for 60", "spo2 below 90 during 60", "spo2 below 90 for 60 s"])
def test_a_malformed_label_rule_says_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="CHANNEL below\\|above THRESHOLD for SECONDS"):
        parse_label_rule(text)


def test_windows_default_to_no_overlap_and_go_into_the_spec() -> None:
    windows = window_spec(600, resample_seconds=5, label_rule="spo2 below 90 for 60")
    assert (windows.window_seconds, windows.stride_seconds, windows.resample_seconds, windows.min_coverage) == (600, 600, 5, 0.5)
    assert windows.label_rule == jobs_pb2.ThresholdLabel(channel="spo2", comparison="below", threshold=90.0, for_seconds=60)
    spec = jobs_pb2.TrainingSpec()
    set_windows(spec, windows)
    assert spec.windows == windows
    evaluation = jobs_pb2.EvaluationSpec()
    set_windows(evaluation, WindowSpec(60, 30, 1, 0.9))
    assert (evaluation.windows.stride_seconds, evaluation.windows.min_coverage, evaluation.windows.HasField("label_rule")) == (30, 0.9, False)
    set_windows(evaluation, None)
    assert evaluation.HasField("windows")  # None leaves the spec as it was
