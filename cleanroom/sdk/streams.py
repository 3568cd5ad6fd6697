"""Streams in the SDK: a stream upload's declaration and a windowed job's windows, as the messages sent.

A stream upload names its TIME column, its channels (each a FEATURE column with its unit, and
optionally a UNIT column intake checks each reading's unit against), the resolution times are
floored to and how many days each patient's times may be shifted:

    client.upload_dataset("vitals.csv", schema, stream=stream_spec("time", ["hr:bpm", "spo2:%:spo2_unit"],
                                                                    resolution_seconds=1, max_shift_days=30))

or, in the schema file, a `[stream]` table (`time_column`, `channels` as "NAME:UNIT[:UNIT_COLUMN]"
texts or {name, unit, unit_column} tables, `time_resolution_seconds`, `max_shift_days`).

A job over a stream names its windows; with a threshold rule the windows are labelled by the rule
and the spec's label_column stays empty:

    client.train(spec, windows=window_spec(600, 300, 5, label_rule="spo2 below 90 for 60"))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cleanroom.domain.streams import COMPARISONS, ThresholdLabel, WindowSpec
from cleanroom.v1 import datasets_pb2, jobs_pb2
from cleanroom.wire.datasets import SchemaError
from cleanroom.wire.jobs import windows_to_proto

Channel = str | Mapping[str, Any] | datasets_pb2.ChannelSpec
RULE_FORM = 'CHANNEL below|above THRESHOLD for SECONDS, e.g. "spo2 below 90 for 60"'


def parse_channel(text: str) -> datasets_pb2.ChannelSpec:
    """ "NAME:UNIT" or "NAME:UNIT:UNIT_COLUMN" (e.g. "hr:bpm", "spo2:%:spo2_unit")."""
    parts = [p.strip() for p in text.split(":")]
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"a channel is NAME:UNIT or NAME:UNIT:UNIT_COLUMN, not {text!r}")
    return datasets_pb2.ChannelSpec(name=parts[0], unit=parts[1], unit_column=parts[2] if len(parts) == 3 else "")


def _channel(entry: Channel) -> datasets_pb2.ChannelSpec:
    if isinstance(entry, datasets_pb2.ChannelSpec):
        return entry
    if isinstance(entry, str):
        return parse_channel(entry)
    unknown = set(entry) - {"name", "unit", "unit_column"}
    if unknown:
        raise ValueError(f"a channel entry has name, unit and unit_column; not {', '.join(sorted(unknown))}")
    return datasets_pb2.ChannelSpec(name=str(entry.get("name", "")), unit=str(entry.get("unit", "")),
                                    unit_column=str(entry.get("unit_column", "")))


def stream_spec(time_column: str, channels: Sequence[Channel], *, resolution_seconds: int = 1,
                max_shift_days: int = 0) -> datasets_pb2.StreamSpec:
    """An upload's stream declaration (the server checks it against the columns, naming each field)."""
    if isinstance(channels, str):
        raise ValueError("channels is a list (one entry per channel)")
    return datasets_pb2.StreamSpec(time_column=time_column, channels=[_channel(c) for c in channels],
                                   time_resolution_seconds=resolution_seconds, max_shift_days=max_shift_days)


def stream_from_schema(entry: object) -> datasets_pb2.StreamSpec:
    """A schema file's `[stream]` table."""
    if not isinstance(entry, Mapping):
        raise SchemaError("stream must be a table: time_column, channels, time_resolution_seconds, max_shift_days")
    unknown = set(entry) - {"time_column", "channels", "time_resolution_seconds", "max_shift_days"}
    if unknown:
        raise SchemaError(f"stream: unknown keys {', '.join(sorted(unknown))}")
    channels = entry.get("channels")
    if not isinstance(channels, list) or not channels:
        raise SchemaError('stream.channels must be a non-empty list, e.g. ["hr:bpm", "spo2:%"]')
    try:
        return stream_spec(str(entry.get("time_column", "")), channels,
                           resolution_seconds=_whole(entry.get("time_resolution_seconds", 1), "stream.time_resolution_seconds"),
                           max_shift_days=_whole(entry.get("max_shift_days", 0), "stream.max_shift_days"))
    except ValueError as error:
        raise SchemaError(f"stream.channels: {error}") from None


def _whole(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -2**31 <= value < 2**31:
        raise SchemaError(f"{field} must be a whole number")
    return value


def parse_label_rule(text: str) -> ThresholdLabel:
    """ "spo2 below 90 for 60": positive when spo2 stays below 90 for 60 s in a row ("60s" too)."""
    words = text.split()
    if len(words) != 5 or words[1].lower() not in COMPARISONS or words[3].lower() != "for":
        raise ValueError(f"a label rule reads {RULE_FORM}")
    try:
        threshold = float(words[2])
        seconds = int(words[4].lower().removesuffix("s"))
    except ValueError:
        raise ValueError(f"a label rule reads {RULE_FORM}: THRESHOLD is a number, SECONDS a whole number") from None
    if not math.isfinite(threshold):
        raise ValueError(f"a label rule reads {RULE_FORM}: THRESHOLD is a finite number")
    return ThresholdLabel(words[0], words[1].lower(), threshold, seconds)


def window_spec(window_seconds: int, stride_seconds: int | None = None, resample_seconds: int = 1, *,
                min_coverage: float = 0.5, label_rule: str | ThresholdLabel | None = None) -> jobs_pb2.WindowSpec:
    """A windowed job's windows: `window_seconds` long, every `stride_seconds` (default: the window,
    no overlap), resampled to `resample_seconds` cells; the model's input is (channels, cells)."""
    rule = parse_label_rule(label_rule) if isinstance(label_rule, str) else label_rule
    return windows_to_proto(WindowSpec(window_seconds, stride_seconds or window_seconds, resample_seconds,
                                       min_coverage, rule))


def set_windows(spec: jobs_pb2.TrainingSpec | jobs_pb2.EvaluationSpec, windows: WindowSpec | jobs_pb2.WindowSpec | None) -> None:
    """Writes the windows into the spec (kept for verify_job, which recomputes the workload from it)."""
    if windows is None:
        return
    spec.windows.CopyFrom(windows if isinstance(windows, jobs_pb2.WindowSpec) else windows_to_proto(windows))
