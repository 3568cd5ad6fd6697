"""Stream views, derived inside the statistics worker from a sealed stream table (cleanroom/domain/
stream_views.py says what each view is).

The sealed table is read one patient at a time (SealedTable.iter_patients), so the worker's memory
follows one patient's readings plus the derived table (a row per patient-day, per patient, or at
most `max_rows_per_patient` readings per patient), never the whole stream. A derived table is
kept for later queries on the same view; the engine then answers over it as over any table: the
per-patient row bound, clamping and noise are its usual ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from cleanroom.crypto.sealed_table import SealedTable
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.stream_views import DAILY_MEAN, DAY_COLUMN, DAY_SECONDS, READINGS, StreamView, observed_cap_seconds
from cleanroom.statistics.engine.plan import DEFAULT_ROWS_PER_PATIENT
from cleanroom.statistics.engine.prepared import PreparedTable
from cleanroom.statistics.engine.query import Query
from cleanroom.statistics.engine.row_bounding import fresh_rng

KEPT_VIEWS = 8  # derived tables a warm worker keeps (each small: per patient-day at most)


@dataclass(frozen=True)
class StreamLayout:
    """The stream's columns the derivation reads (from the worker's settings)."""

    patient_column: str
    time_column: str
    time_resolution_seconds: int
    group_columns: tuple[str, ...]


class StreamViews:
    """A warm worker's stream: the sealed table (only its index decrypted up front) and the views derived so far."""

    def __init__(self, fileobj: BinaryIO, key: bytes, dataset_id: str, layout: StreamLayout) -> None:
        self._table = SealedTable(fileobj, key, dataset_id)
        self._layout = layout
        self._derived: dict[tuple[StreamView, int], PreparedTable] = {}

    def prepared(self, query: Query) -> PreparedTable:
        """The derived table `query` reads, prepared for the engine (derived on first use)."""
        view = query.stream_view
        if view is None:
            raise bad_request("the statistics query is invalid", FieldViolation("stream_view", "a query over a stream names a stream view"))
        if view.channel not in self._table.schema.names:
            raise bad_request("the statistics query is invalid", FieldViolation("stream_view.channel", "not a channel of this stream"))
        rows = query.max_rows_per_patient or DEFAULT_ROWS_PER_PATIENT
        key = (view, rows if view.kind == READINGS else 0)  # only the readings view depends on the bound
        if key not in self._derived:
            if len(self._derived) >= KEPT_VIEWS:
                self._derived.clear()
            table = derive(self._table.iter_patients(), self._table.schema, view, self._layout, rows=rows)
            self._derived[key] = PreparedTable(table, patient_column=self._layout.patient_column)
        return self._derived[key]


def derive(patients: Iterator[tuple[str, pa.Table]], schema: pa.Schema, view: StreamView, layout: StreamLayout, *,
           rows: int, rng: np.random.Generator | None = None) -> pa.Table:
    """The view's table, built one patient at a time. `rows`: the readings view's per-patient draw."""
    rng = rng or fresh_rng()
    groups = [g for g in layout.group_columns if g in schema.names]
    fields = [pa.field(layout.patient_column, pa.string()), *(schema.field(g) for g in groups),
              *([pa.field(DAY_COLUMN, pa.int64())] if view.kind == DAILY_MEAN else []), pa.field(view.value_column, pa.float64())]
    out = pa.schema(fields)
    parts = []
    for patient, readings in patients:
        values, days = _per_patient(readings, view, layout, rows, rng)
        if not len(values):
            continue
        columns: dict[str, Any] = {layout.patient_column: [patient] * len(values)}
        columns.update({g: [_first_value(readings.column(g))] * len(values) for g in groups})
        if view.kind == DAILY_MEAN:
            columns[DAY_COLUMN] = days
        columns[view.value_column] = values
        parts.append(pa.table(columns, schema=out))
    return pa.concat_tables(parts) if parts else out.empty_table()


def _per_patient(readings: pa.Table, view: StreamView, layout: StreamLayout, rows: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(the patient's derived values, their days for daily_mean, else zeros)."""
    times = readings.column(layout.time_column).to_numpy().astype(np.int64)
    values = readings.column(view.channel).to_numpy().astype(np.float64)  # nulls arrive as NaN
    observed = ~np.isnan(values)
    if view.kind == DAILY_MEAN:
        return _daily_means((times[observed] - times[0]) // DAY_SECONDS, values[observed])
    if view.kind == READINGS:
        kept = np.flatnonzero(observed)
        if kept.size > rows:
            kept = np.sort(rng.choice(kept, size=rows, replace=False))
        return values[kept], np.zeros(kept.size, np.int64)
    fraction = time_in_range(times[observed], values[observed], view, cap=observed_cap_seconds(layout.time_resolution_seconds),
                             last=layout.time_resolution_seconds)
    return (np.array([fraction]), np.zeros(1, np.int64)) if fraction is not None else (np.empty(0), np.empty(0, np.int64))


def _daily_means(days: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, index = np.unique(days, return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=unique.size)
    counts = np.bincount(index, minlength=unique.size)
    return sums / counts, unique.astype(np.int64)


def time_in_range(times: np.ndarray, values: np.ndarray, view: StreamView, *, cap: int, last: int) -> float | None:
    """The fraction of observed time in [low, high]: each reading holds until the next, at most
    `cap` seconds (a longer interval is a sensor gap, not observed time); the last holds `last`."""
    if not times.size or view.low is None or view.high is None:
        return None
    held = np.minimum(np.append(np.diff(times), last), cap).astype(np.float64)
    inside = (values >= view.low) & (values <= view.high)
    total = float(held.sum())
    return float(held[inside].sum()) / total if total > 0 else None


def _first_value(column: pa.ChunkedArray) -> Any:
    """The patient's first non-null value (its group); None when it has none."""
    present = column.drop_null()
    return present[0].as_py() if len(present) else None


def open_stream(path: Path, secrets: dict[str, str], dataset_id: str, settings: dict[str, Any]) -> StreamViews:
    """The worker's stream from its inputs: the key released to this sandbox unwraps it."""
    from cleanroom.worker.keys import unwrap_site_key

    key = unwrap_site_key(secrets, dataset_id)
    stream = settings["stream"]
    layout = StreamLayout(settings["patient_column"], str(stream["time_column"]), int(stream["time_resolution_seconds"]),
                          tuple(str(g) for g in stream["group_columns"]))
    return StreamViews(path.open("rb"), key, dataset_id, layout)
