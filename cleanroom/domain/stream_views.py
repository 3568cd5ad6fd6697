"""Stream views: the small per-patient tables a statistics query over a stream reads (pure).

A stream holds one row per reading (cleanroom/domain/streams.py); a statistic over raw readings
would let a patient with 100 times more readings weigh 100 times more. So a query over a stream
names a `StreamView`, which the statistics worker derives from the sealed stream table one patient
at a time (cleanroom/worker/stream_views.py), and the engine then answers over that derived table
with its usual per-patient row bound and noise:

- "daily_mean" (channel): one row per patient-day (day = whole days since the patient's first
  reading) holding the channel's mean that day; the row bound caps the days a patient gives.
- "readings" (channel): at most `max_rows_per_patient` of the patient's readings, drawn uniformly
  by the worker, one row each (histograms and quantiles of readings).
- "time_in_range" (channel, low, high): one row per patient, the fraction of the patient's observed
  time with the channel in [low, high] (each reading holds until the next one, at most
  `observed_cap_seconds`, so a sensor gap is not observed time); public bounds [0, 1].

Every view also carries the patient key and the stream's group columns (categorical FEATURE or
LABEL columns that are not channels), each the patient's first non-null value. The derived
columns are stated here as ColumnSpecs, so validation and pricing check a query against them
before any budget moves. The view is part of the query (its JSON form): the query's hash, the
ledger's reference, the audit entry and the receipt all name it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cleanroom.domain.deid import ColumnRole, ColumnSpec, ColumnType, stored_schema
from cleanroom.domain.errors import FieldViolation
from cleanroom.domain.streams import StreamDescription
from enclave_sim.canonical import decimal_text

DAILY_MEAN = "daily_mean"
READINGS = "readings"
TIME_IN_RANGE = "time_in_range"
VIEW_KINDS = (DAILY_MEAN, READINGS, TIME_IN_RANGE)
DAY_COLUMN = "day"
DAY_SECONDS = 86_400
GROUP_ROLES = (ColumnRole.FEATURE, ColumnRole.LABEL)


@dataclass(frozen=True)
class StreamView:
    kind: str  # one of VIEW_KINDS
    channel: str
    low: float | None = None  # time_in_range only
    high: float | None = None

    @property
    def value_column(self) -> str:
        """The derived column a query measures."""
        if self.kind == READINGS:
            return self.channel
        return f"{self.channel}_{self.kind}"

    def text(self) -> str:
        """"daily_mean:heart_rate", "time_in_range:spo2:90:100": how the CLI, the audit entry and the receipt name it."""
        parts = [self.kind, self.channel]
        if self.low is not None or self.high is not None:
            parts += [_number_text(self.low), _number_text(self.high)]
        return ":".join(parts)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind, "channel": self.channel}
        if self.low is not None:
            out["low"] = decimal_text(self.low)
        if self.high is not None:
            out["high"] = decimal_text(self.high)
        return out

    @staticmethod
    def from_json(data: Mapping[str, object]) -> StreamView:
        return StreamView(str(data["kind"]), str(data["channel"]), _optional_float(data.get("low")),
                          _optional_float(data.get("high")))


def parse_view(text: str) -> StreamView:
    """KIND:CHANNEL, or time_in_range:CHANNEL:LOW:HIGH (the CLI's --stream-view)."""
    parts = text.split(":")
    if len(parts) == 2 and all(parts):
        return StreamView(parts[0], parts[1])
    if len(parts) == 4 and parts[0] and parts[1]:
        try:
            return StreamView(parts[0], parts[1], float(parts[2]), float(parts[3]))
        except ValueError:
            pass
    raise ValueError("a stream view is KIND:CHANNEL, or time_in_range:CHANNEL:LOW:HIGH")


def observed_cap_seconds(resolution_seconds: int) -> int:
    """The longest time one reading counts as observed: the intake report's gap threshold."""
    return max(60, 10 * resolution_seconds)


def validate_view(view: StreamView, stream: StreamDescription) -> list[FieldViolation]:
    """Every way `view` cannot be derived from this stream, named by field (never a value)."""
    violations = []
    if view.kind not in VIEW_KINDS:
        violations.append(FieldViolation("stream_view.kind", "must be one of " + ", ".join(VIEW_KINDS)))
    if stream.unit(view.channel) is None:
        violations.append(FieldViolation("stream_view.channel", "not a channel of this stream"))
    if view.kind != TIME_IN_RANGE:
        if view.low is not None or view.high is not None:
            violations.append(FieldViolation("stream_view.low", "only a time_in_range view takes low and high"))
        return violations
    for name, value in (("low", view.low), ("high", view.high)):
        if value is None or not math.isfinite(value):
            violations.append(FieldViolation(f"stream_view.{name}", "a time_in_range view needs a finite low and high"))
    if view.low is not None and view.high is not None and view.low > view.high:
        violations.append(FieldViolation("stream_view.low", "must be at most high"))
    return violations


def group_columns(columns: Sequence[ColumnSpec], stream: StreamDescription) -> tuple[ColumnSpec, ...]:
    """The stream's stored categorical columns a view carries per patient: FEATURE or LABEL, text or
    with declared categories, not a channel, and not named like a derived column."""
    channels = {name for name, _ in stream.channels}
    derived = {DAY_COLUMN} | {f"{c}_{kind}" for c in channels for kind in (DAILY_MEAN, TIME_IN_RANGE)}
    return tuple(c for c in stored_schema(columns)
                 if c.role in GROUP_ROLES and c.name not in channels | derived
                 and (c.type is ColumnType.STRING or c.categories))


def view_columns(view: StreamView, columns: Sequence[ColumnSpec], stream: StreamDescription) -> tuple[ColumnSpec, ...]:
    """The derived table's columns, as the engine will see them (a validated view)."""
    patient = next(c for c in stored_schema(columns) if c.role.spec.privacy_unit)
    out = [patient, *group_columns(columns, stream)]
    if view.kind == DAILY_MEAN:
        out.append(ColumnSpec(DAY_COLUMN, ColumnType.INTEGER, ColumnRole.FEATURE))
    out.append(ColumnSpec(view.value_column, ColumnType.FLOAT, ColumnRole.FEATURE))
    return tuple(out)


def _number_text(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _optional_float(value: object) -> float | None:
    return None if value is None else float(str(value))
