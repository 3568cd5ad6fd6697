"""Pass two of stream intake, one partition at a time: each patient's readings in time order,
shifted by the patient's secret whole-day offset, floored to the stream's resolution, readings of
one cell averaged into one; and the counts the intake report gives (readings, spans, gaps).

The shift is a keyed hash of the patient's pseudonym (HMAC-SHA256 under the data owner's time
shift key): the same patient always moves by the same number of days, every patient by its own,
and nobody without the key can undo it. Whole days keep the time of day, so daily rhythms survive.
"""

from __future__ import annotations

import hmac
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from cleanroom.datasets.stream_times import MICROS
from cleanroom.domain.streams import StreamIntakeSummary, StreamSpec

DAY = 86_400
_SHIFT_CONTEXT = b"cleanroom-time-shift:"


def shift_days(shift_key: bytes, pseudonym: str, max_days: int) -> int:
    """The patient's secret offset in whole days, in [-max_days, max_days]; 0 when max_days is 0."""
    if max_days == 0:
        return 0
    digest = hmac.digest(shift_key, _SHIFT_CONTEXT + pseudonym.encode("utf-8"), "sha256")
    return int.from_bytes(digest[:8], "big") % (2 * max_days + 1) - max_days  # bias below 2^-40


def gap_seconds(spec: StreamSpec) -> int:
    return max(60, 10 * spec.time_resolution_seconds)


@dataclass
class StreamCounts:
    """The summary's counts, kept as partitions go by: O(patients) memory (one span each)."""

    readings: int = 0
    merged: int = 0
    gaps: int = 0
    spans: list[int] = field(default_factory=list)
    channels: dict[str, int] = field(default_factory=dict)  # readings holding a value

    def summary(self, spec: StreamSpec, time_zone: str) -> StreamIntakeSummary:
        spans = self.spans or [0]
        return StreamIntakeSummary(
            readings=self.readings, patients=len(self.spans),
            channels=tuple((c.name, c.unit, self.channels.get(c.name, 0)) for c in spec.channels),
            shortest_span_seconds=min(spans), median_span_seconds=int(statistics.median_low(spans)),
            longest_span_seconds=max(spans), gaps=self.gaps, gap_seconds=gap_seconds(spec),
            readings_merged=self.merged, time_resolution_seconds=spec.time_resolution_seconds,
            max_shift_days=spec.max_shift_days, time_zone=time_zone)


@dataclass(frozen=True)
class Cells:
    """How one upload's readings become stored cells."""

    spec: StreamSpec
    patient_column: str
    shift_key: bytes

    def patients(self, partition: pa.Table, counts: StreamCounts) -> Iterator[pa.Table]:
        """Each patient's stored rows (time in epoch seconds; the pseudonym still dictionary-encoded),
        one table per patient."""
        if partition.num_rows == 0:
            return
        time = self.spec.time_column
        # The partition's pseudonyms as codes into one dictionary: grouping by an integer code is
        # far cheaper than by a 32-character string. Then each patient's readings in time order.
        partition = partition.unify_dictionaries()
        chunks = partition.column(self.patient_column).chunks
        codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks]).astype(np.int64)
        order = np.lexsort((partition.column(time).to_numpy(), codes))
        table, codes = partition.take(pa.array(order)).combine_chunks(), codes[order]
        seconds = np.floor_divide(table.column(time).to_numpy(), MICROS) + self._shifts(chunks[0].dictionary)[codes]
        resolution = self.spec.time_resolution_seconds
        cells = np.floor_divide(seconds, resolution) * resolution
        starts = np.flatnonzero(np.r_[True, (codes[1:] != codes[:-1]) | (cells[1:] != cells[:-1])])
        table = self._merged(table, starts, cells[starts]) if len(starts) < len(cells) else \
            table.set_column(table.schema.get_field_index(time), time, pa.array(cells, pa.int64()))
        counts.merged += len(cells) - len(starts)
        yield from self._by_patient(table, codes[starts], counts)

    def pieces(self, pieces: Iterator[tuple[pa.Table, bool]], counts: StreamCounts) -> Iterator[pa.Table]:
        """One patient who alone outgrew a partition, a piece of readings at a time (time order,
        `True` on the last piece): each piece stored as `patients` stores it, the readings of its
        last cell held back for the next piece, the span and the gaps counted over the whole."""
        spans_before, first, previous = len(counts.spans), None, None
        carry: pa.Table | None = None
        for piece, last in pieces:
            table = piece if carry is None else pa.concat_tables([carry, piece]).unify_dictionaries()
            table, carry = (table, None) if last else self._last_cell_held(table)
            for rows in self.patients(table, counts):
                times = rows.column(self.spec.time_column)
                if previous is not None and times[0].as_py() - previous > gap_seconds(self.spec):
                    counts.gaps += 1  # between two pieces
                first = times[0].as_py() if first is None else first
                previous = times[-1].as_py()
                yield rows
        del counts.spans[spans_before:]
        if first is not None and previous is not None:
            counts.spans.append(previous - first)

    def _last_cell_held(self, table: pa.Table) -> tuple[pa.Table, pa.Table | None]:
        """(the readings before the last one's cell, the readings of that cell)."""
        if table.num_rows == 0:
            return table, None
        table = table.unify_dictionaries()
        pseudonym = table.column(self.patient_column).chunk(0).dictionary[0].as_py()
        shift = shift_days(self.shift_key, pseudonym, self.spec.max_shift_days) * DAY
        seconds = np.floor_divide(table.column(self.spec.time_column).to_numpy(), MICROS) + shift
        cells = np.floor_divide(seconds, self.spec.time_resolution_seconds)
        cut = int(np.searchsorted(cells, cells[-1], side="left"))  # times increase: so do cells
        return table.slice(0, cut), table.slice(cut)

    def _shifts(self, pseudonyms: pa.Array) -> np.ndarray:
        days = [shift_days(self.shift_key, p, self.spec.max_shift_days) for p in pseudonyms.to_pylist()]
        return np.array(days, dtype=np.int64) * DAY

    def _merged(self, table: pa.Table, starts: np.ndarray, times: np.ndarray) -> pa.Table:
        """One row per cell: channels averaged over the readings holding a value, every other
        column the cell's last value."""
        ends = np.r_[starts[1:], table.num_rows] - 1
        channels = {c.name for c in self.spec.channels}
        arrays = []
        for name in table.column_names:
            if name == self.spec.time_column:
                arrays.append(pa.array(times, pa.int64()))
            elif name in channels:
                arrays.append(_means(table.column(name).to_numpy(), starts))
            else:
                arrays.append(table.column(name).take(pa.array(ends)))
        return pa.Table.from_arrays(arrays, schema=table.schema)

    def _by_patient(self, table: pa.Table, codes: np.ndarray, counts: StreamCounts) -> Iterator[pa.Table]:
        times = table.column(self.spec.time_column).to_numpy()
        same = codes[1:] == codes[:-1]
        counts.gaps += int(np.count_nonzero(same & (np.diff(times) > gap_seconds(self.spec))))
        counts.readings += table.num_rows
        for channel in self.spec.channels:
            column = table.column(channel.name)
            counts.channels[channel.name] = counts.channels.get(channel.name, 0) + len(column) - column.null_count
        starts = np.flatnonzero(np.r_[True, ~same])
        ends = np.r_[starts[1:], len(codes)]
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            counts.spans.append(int(times[end - 1] - times[start]))
            yield table.slice(start, end - start)


def _means(values: np.ndarray, starts: np.ndarray) -> pa.Array:
    """Each cell's mean of its non-missing readings (missing: NaN here); missing if it has none."""
    present = ~np.isnan(values)
    sums = np.add.reduceat(np.where(present, values, 0).astype(np.float64), starts)
    counts = np.add.reduceat(present.astype(np.int64), starts)
    empty = counts == 0
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=~empty)
    return pa.array(means.astype(np.float32), mask=empty)
