"""Wellness-IoT streams: a dataset kind whose rows are timed readings of one patient's channels (pure).

A stream dataset declares its columns as a table does (cleanroom.domain.deid), plus a `StreamSpec`:
which TIMESTAMP column is the reading time, which numeric FEATURE columns are channels (each with
its unit, and optionally a UNIT column whose per-reading values intake checks against that unit),
the time resolution readings are floored to, and how far each patient's times are shifted. Intake
(cleanroom/datasets/stream_intake.py) stores it as a sealed stream table (cleanroom/crypto/
sealed_table.py): ordered by patient and time, one patient's span readable alone.

A job over a stream names a `WindowSpec`: examples are windows of `window_seconds`, every
`stride_seconds`, resampled to a `resample_seconds` grid, over the job's feature columns (its
channels, in the model's channel order); each window is labelled by the job's label column (its
value at the window's last reading) or by a `ThresholdLabel` over a channel ("SpO2 below 90 for
60 s"). The privacy unit stays the patient: `max_rows_per_patient` bounds the windows a patient
gives to one step (and to an evaluation), and the patient's summed gradient is clipped as a whole.
The model's input is (channels, window_seconds / resample_seconds).

What is public about a stream (`StreamDescription`, shown with the schema to whoever may see the
schema): its channels and units, its resolution, and its longest patient span floored to whole
hours, which lets a job with a window longer than any patient's stream be refused before any budget
moves. The patient count is public for tables already.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cleanroom.domain.deid import NUMERIC_TYPES, ColumnRole, ColumnSpec, ColumnType
from cleanroom.domain.errors import FieldViolation
from enclave_sim.canonical import decimal_text

MAX_CHANNELS = 64
MAX_UNIT_LENGTH = 32
MAX_RESOLUTION_SECONDS = 3600
MAX_SHIFT_DAYS = 3650
MAX_WINDOW_CELLS = 1 << 16  # cells of one window per channel
COMPARISONS = ("below", "above")
HOUR = 3600


@dataclass(frozen=True)
class ChannelSpec:
    name: str  # a FEATURE column, INTEGER or FLOAT
    unit: str  # e.g. "bpm", "%", "steps/min", "g"; public
    unit_column: str = ""  # a UNIT column holding each reading's unit: a change mid-stream is refused


@dataclass(frozen=True)
class StreamSpec:
    """What a hospital declares about a stream upload, beside its columns."""

    time_column: str
    channels: tuple[ChannelSpec, ...]
    # Reading times are floored to this many seconds; readings of one patient in one cell are averaged.
    time_resolution_seconds: int = 1
    # 0: times kept. N: each patient's times move by a secret whole number of days in [-N, N] (a
    # keyed hash of the patient's pseudonym), so the time of day, and rhythms with it, survive.
    max_shift_days: int = 0

    def channel(self, name: str) -> ChannelSpec | None:
        return next((c for c in self.channels if c.name == name), None)


@dataclass(frozen=True)
class StreamIntakeSummary:
    """The stream part of an intake report: what intake stored and did (the data owner sees it)."""

    readings: int = 0  # stored readings (rows), after coarsening
    patients: int = 0
    channels: tuple[tuple[str, str, int], ...] = ()  # (channel, unit, readings holding a value)
    shortest_span_seconds: int = 0  # per patient: last reading minus first
    median_span_seconds: int = 0
    longest_span_seconds: int = 0
    gaps: int = 0  # intervals between a patient's consecutive readings longer than gap_seconds
    gap_seconds: int = 0  # the threshold: max(60, 10 x the resolution)
    readings_merged: int = 0  # readings averaged into another of the same cell by coarsening
    time_resolution_seconds: int = 1
    max_shift_days: int = 0  # 0: times not shifted
    time_zone: str = ""  # the offset the upload's timestamps carried ("UTC", "+09:00"; "" for epoch seconds)


@dataclass(frozen=True)
class StreamDescription:
    """What is public about a stored stream (see the module docstring)."""

    time_column: str
    channels: tuple[tuple[str, str], ...]  # (channel, unit)
    time_resolution_seconds: int
    longest_span_hours: int  # the longest patient span, floored to whole hours

    def unit(self, channel: str) -> str | None:
        return next((u for c, u in self.channels if c == channel), None)

    def to_json(self) -> dict[str, object]:
        return {"time_column": self.time_column, "channels": [list(c) for c in self.channels],
                "time_resolution_seconds": self.time_resolution_seconds,
                "longest_span_hours": self.longest_span_hours}

    @staticmethod
    def from_json(data: Mapping[str, object]) -> StreamDescription:
        channels = data["channels"]
        assert isinstance(channels, list)
        return StreamDescription(str(data["time_column"]), tuple((str(c), str(u)) for c, u in channels),
                                 int(str(data["time_resolution_seconds"])), int(str(data["longest_span_hours"])))


def describe(spec: StreamSpec, summary: StreamIntakeSummary) -> StreamDescription:
    return StreamDescription(spec.time_column, tuple((c.name, c.unit) for c in spec.channels),
                             spec.time_resolution_seconds, summary.longest_span_seconds // HOUR)


# --- the upload's stream declaration


def validate_stream(columns: Sequence[ColumnSpec], spec: StreamSpec) -> list[FieldViolation]:
    """Every rule a stream declaration breaks, beside the column rules deid.validate_policy checks."""
    by_name = {c.name: c for c in columns}
    violations = _unsupported_role_violations(columns)
    violations += _time_violations(columns, spec, by_name)
    violations += _channel_violations(spec, by_name)
    violations += _unit_column_violations(columns, spec)
    if not (_whole(spec.time_resolution_seconds) and 1 <= spec.time_resolution_seconds <= MAX_RESOLUTION_SECONDS):
        violations.append(FieldViolation("stream.time_resolution_seconds", f"must be between 1 and {MAX_RESOLUTION_SECONDS}"))
    if not (_whole(spec.max_shift_days) and 0 <= spec.max_shift_days <= MAX_SHIFT_DAYS):
        violations.append(FieldViolation("stream.max_shift_days", f"must be between 0 and {MAX_SHIFT_DAYS}"))
    return violations


def _unsupported_role_violations(columns: Sequence[ColumnSpec]) -> list[FieldViolation]:
    unsupported = (ColumnRole.QUASI_IDENTIFIER, ColumnRole.LINKAGE_ID)
    return [FieldViolation(f"columns[{c.name}]", f"a stream dataset cannot declare a {c.role.name} column yet")
            for c in columns if c.role in unsupported]


def _time_violations(columns: Sequence[ColumnSpec], spec: StreamSpec, by_name: Mapping[str, ColumnSpec]) -> list[FieldViolation]:
    times = [c for c in columns if c.role is ColumnRole.TIME]
    if len(times) != 1:
        return [FieldViolation("columns", f"a stream declares exactly one TIME column; {len(times)} do")]
    column = by_name.get(spec.time_column)
    if column is None or column.role is not ColumnRole.TIME:
        return [FieldViolation("stream.time_column", "must name the TIME column")]
    if column.type is not ColumnType.TIMESTAMP:
        return [FieldViolation(f"columns[{column.name}]", "the TIME column's type is TIMESTAMP")]
    return []


def _channel_violations(spec: StreamSpec, by_name: Mapping[str, ColumnSpec]) -> list[FieldViolation]:
    if not 1 <= len(spec.channels) <= MAX_CHANNELS:
        return [FieldViolation("stream.channels", f"declare 1 to {MAX_CHANNELS} channels")]
    violations, seen = [], set()
    for channel in spec.channels:
        field = f"stream.channels[{channel.name}]"
        column = by_name.get(channel.name)
        if channel.name in seen:
            violations.append(FieldViolation(field, "the channel is declared twice"))
        seen.add(channel.name)
        if column is None or column.role is not ColumnRole.FEATURE or column.type not in NUMERIC_TYPES:
            violations.append(FieldViolation(field, "a channel is a FEATURE column of type INTEGER or FLOAT"))
        elif column.categories:
            violations.append(FieldViolation(field, "a channel holds measurements, not declared categories"))
        if not isinstance(channel.unit, str) or not 0 < len(channel.unit.strip()) <= MAX_UNIT_LENGTH:
            violations.append(FieldViolation(f"{field}.unit", f"each channel names its unit in 1 to {MAX_UNIT_LENGTH} characters"))
        if channel.unit_column:
            unit = by_name.get(channel.unit_column)
            if unit is None or unit.role is not ColumnRole.UNIT or unit.type is not ColumnType.STRING:
                violations.append(FieldViolation(f"{field}.unit_column", "must name a UNIT column of type STRING"))
    return violations


def _unit_column_violations(columns: Sequence[ColumnSpec], spec: StreamSpec) -> list[FieldViolation]:
    used = [c.unit_column for c in spec.channels if c.unit_column]
    violations = [FieldViolation(f"columns[{c.name}]", "a UNIT column belongs to exactly one channel")
                  for c in columns if c.role is ColumnRole.UNIT and used.count(c.name) != 1]
    return violations


# --- windowed jobs


@dataclass(frozen=True)
class ThresholdLabel:
    """A window is positive when `channel` stays below (or above) `threshold` for `for_seconds`
    in a row (resampled cells, each wholly below or above) anywhere in the window."""

    channel: str
    comparison: str  # "below" or "above"
    threshold: float
    for_seconds: int

    def to_json(self) -> dict[str, object]:
        return {"channel": self.channel, "comparison": self.comparison,
                "threshold": signed_decimal_text(self.threshold), "for_seconds": self.for_seconds}

    @staticmethod
    def from_json(data: Mapping[str, object]) -> ThresholdLabel:
        return ThresholdLabel(str(data["channel"]), str(data["comparison"]), float(str(data["threshold"])),
                              _int(data, "for_seconds"))


@dataclass(frozen=True)
class WindowSpec:
    """How a job over a stream cuts examples (see the module docstring)."""

    window_seconds: int
    stride_seconds: int
    resample_seconds: int
    # A window is kept when every channel has a reading in at least this fraction of its cells
    # (empty cells are filled from the last reading before them, or the first after).
    min_coverage: float = 0.5
    label_rule: ThresholdLabel | None = None  # None: the job's label column labels each window

    @property
    def cells(self) -> int:
        return self.window_seconds // self.resample_seconds

    def input_shape(self, channels: int) -> tuple[int, int]:
        """The model's input for one window: (channels, cells)."""
        return (channels, self.cells)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"window_seconds": self.window_seconds, "stride_seconds": self.stride_seconds,
                                  "resample_seconds": self.resample_seconds,
                                  "min_coverage": decimal_text(self.min_coverage)}
        if self.label_rule is not None:
            out["label_rule"] = self.label_rule.to_json()
        return out

    @staticmethod
    def from_json(data: Mapping[str, object]) -> WindowSpec:
        rule = data.get("label_rule")
        return WindowSpec(_int(data, "window_seconds"), _int(data, "stride_seconds"), _int(data, "resample_seconds"),
                          float(str(data["min_coverage"])),
                          ThresholdLabel.from_json(rule) if isinstance(rule, Mapping) else None)


def validate_windows(spec: WindowSpec, *, stream: StreamDescription, columns: Sequence[ColumnSpec],
                     feature_columns: Sequence[str], label_column: str) -> list[FieldViolation]:
    """Every way a windowed request cannot run on this stream, named by field; reads only what is
    public about the stream. The job's feature columns must be channels; its label is the label
    column or the rule, exactly one of them."""
    numbers = [("window_seconds", spec.window_seconds), ("stride_seconds", spec.stride_seconds),
               ("resample_seconds", spec.resample_seconds)]
    bad = [FieldViolation(f"windows.{name}", "must be a positive whole number of seconds")
           for name, value in numbers if not (_whole(value) and value > 0)]
    if bad:
        return bad
    violations = _grid_violations(spec, stream)
    channels = {c for c, _ in stream.channels}
    violations += [FieldViolation(f"feature_columns[{name}]", "not a channel of this stream")
                   for name in feature_columns if name not in channels]
    if len(set(feature_columns)) != len(feature_columns) or not feature_columns:
        violations.append(FieldViolation("feature_columns", "name each channel once, at least one"))
    if not (math.isfinite(spec.min_coverage) and 0 < spec.min_coverage <= 1):
        violations.append(FieldViolation("windows.min_coverage", "must be in (0, 1]"))
    return violations + _label_violations(spec, channels, columns, label_column)


def _grid_violations(spec: WindowSpec, stream: StreamDescription) -> list[FieldViolation]:
    violations = []
    if spec.resample_seconds % stream.time_resolution_seconds:
        violations.append(FieldViolation("windows.resample_seconds",
                                         f"must be a multiple of the stream's resolution ({stream.time_resolution_seconds} s)"))
    if spec.window_seconds % spec.resample_seconds or spec.stride_seconds % spec.resample_seconds:
        violations.append(FieldViolation("windows", "window_seconds and stride_seconds must be multiples of resample_seconds"))
    elif spec.cells > MAX_WINDOW_CELLS:
        violations.append(FieldViolation("windows.window_seconds", f"a window holds at most {MAX_WINDOW_CELLS} cells"))
    if spec.window_seconds > stream.longest_span_hours * HOUR + HOUR - 1:
        violations.append(FieldViolation("windows.window_seconds",
                                         f"longer than any patient's stream (the longest spans {stream.longest_span_hours} h)"))
    return violations


def _label_violations(spec: WindowSpec, channels: set[str], columns: Sequence[ColumnSpec],
                      label_column: str) -> list[FieldViolation]:
    rule = spec.label_rule
    if rule is None:
        labels = {c.name for c in columns if c.role is ColumnRole.LABEL}
        if label_column not in labels:
            return [FieldViolation("label_column", "name a LABEL column of this stream, or give windows.label_rule")]
        return []
    violations = []
    if label_column:
        violations.append(FieldViolation("label_column", "leave it empty when windows.label_rule labels the windows"))
    if rule.channel not in channels:
        violations.append(FieldViolation("windows.label_rule.channel", "not a channel of this stream"))
    if rule.comparison not in COMPARISONS:
        violations.append(FieldViolation("windows.label_rule.comparison", "must be below or above"))
    if not math.isfinite(rule.threshold):
        violations.append(FieldViolation("windows.label_rule.threshold", "must be a finite number"))
    if not (_whole(rule.for_seconds) and 0 < rule.for_seconds <= spec.window_seconds
            and rule.for_seconds % spec.resample_seconds == 0):
        violations.append(FieldViolation("windows.label_rule.for_seconds",
                                         "a positive multiple of resample_seconds, at most window_seconds"))
    return violations


def signed_decimal_text(value: float) -> str:
    """decimal_text with a leading "-" for a negative number (a channel such as acceleration is
    signed); -0.0 is written as 0.0."""
    return "-" + decimal_text(-value) if value < 0 else decimal_text(value + 0.0)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(data: Mapping[str, object], key: str) -> int:
    value = data[key]
    if not _whole(value):
        raise ValueError(f"{key} must be a whole number")
    assert isinstance(value, int)
    return value
