"""Windows over one patient's stream: resampling, candidate starts, coverage and labels (pure numpy).

The examples of a windowed job (domain/streams.py `WindowSpec`) are windows of `window_seconds`
on a grid of `resample_seconds` cells, so one window is a (channels, cells) array in the job's
channel order. This module cuts them from one patient's readings; it knows nothing of storage
(worker/stream_source.py reads the readings from a sealed stream table) nor of sampling patients
(the trainer does that). No pyarrow here: it runs under the trainer's module tripwire.

    Readings(times, channels, label)          one patient's readings in a time range, ascending
    window_starts(first_time, last_time, spec) every start on the stride grid, anchored at the
                                               patient's first reading, whose window fits the span
    choose_starts(starts, k, rng)             at most k of them, uniform without replacement
    runs(starts, spec)                        the disjoint time ranges [lo, hi) those windows cover
    cut(readings, starts, spec)               -> (X float32 (n, C, L), y float64 (n,))
    resample(times, values, start, cells, resample_seconds)
                                              -> (grid (C, cells), observed fraction per channel)

Definitions (the tests hold a slow, obvious reference to each):
- A cell [start + i*r, start + (i+1)*r) holds the mean of its readings (NaN readings ignored). An
  empty cell takes the value of the last non-empty cell before it IN THE WINDOW, else of the first
  one after it; so a window depends only on the readings inside it, whatever else was read.
- A window fits the span when every one of its cells starts at or before the last reading:
  start + window_seconds - resample_seconds <= last_time.
- A window is kept when, for every channel it uses (the job's channels and a threshold rule's
  channel), the fraction of its cells holding a reading is >= min_coverage, and its label is finite.
- Label column: the value at the window's last reading (the last row with start <= time < end).
- ThresholdLabel: a cell is "below" when ALL its readings are strictly below the threshold (its
  maximum is), "above" when all are strictly above (its minimum is); empty cells are filled as
  above from the cell extremes. The window is 1.0 when for_seconds / resample_seconds consecutive
  cells qualify anywhere in it, else 0.0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the domain module pulls in enclave_sim, which the trainer's tripwire refuses
    from cleanroom.domain.streams import ThresholdLabel, WindowSpec


@dataclass(frozen=True)
class Readings:
    """One patient's readings in a time range."""

    times: np.ndarray     # int64 (n,), epoch seconds, strictly increasing
    channels: np.ndarray  # float32 (C, n), the job's channels in model order, NaN where missing
    label: np.ndarray     # float64 (n,): the label column, or the threshold rule's channel; NaN missing

    @staticmethod
    def from_columns(times: np.ndarray, columns: Mapping[str, np.ndarray], *, channels: Sequence[str],
                     label: str) -> Readings:
        """`columns` by name; `label` names the label column or the rule's channel."""
        values = np.stack([np.asarray(columns[c], dtype=np.float32) for c in channels]) if channels \
            else np.zeros((0, len(times)), dtype=np.float32)
        return Readings(np.asarray(times, dtype=np.int64), values, np.asarray(columns[label], dtype=np.float64))


def window_starts(first_time: int, last_time: int, spec: WindowSpec) -> np.ndarray:
    """Every start first_time + j*stride whose window fits in [first_time, last_time] (int64)."""
    room = last_time - first_time - (spec.window_seconds - spec.resample_seconds)
    if room < 0:
        return np.zeros(0, dtype=np.int64)
    return first_time + spec.stride_seconds * np.arange(room // spec.stride_seconds + 1, dtype=np.int64)


def choose_starts(starts: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """At most k of `starts`, uniform without replacement, in ascending order."""
    if len(starts) <= k:
        return np.sort(starts)
    return np.sort(starts[rng.choice(len(starts), size=k, replace=False)])


def runs(starts: np.ndarray, spec: WindowSpec) -> list[tuple[int, int]]:
    """The time ranges [lo, hi) the windows at `starts` cover, overlapping windows merged: what a
    reader must read (and all it needs) to cut them."""
    lo, hi, _ = _runs(_sorted_starts(starts, spec), spec.window_seconds)
    return [(int(a), int(b)) for a, b in zip(lo, hi, strict=True)]


def resample(times: np.ndarray, values: np.ndarray, start: int, cells: int,
             resample_seconds: int) -> tuple[np.ndarray, np.ndarray]:
    """`values` (C, n) on the grid of `cells` cells from `start`: cell means, empty cells filled
    (last non-empty cell before, else first after; NaN when the channel has none), and each
    channel's observed fraction of cells. Readings outside the grid are ignored."""
    times = np.asarray(times, dtype=np.int64)
    values = np.asarray(values, dtype=np.float32).reshape(-1, len(times))
    inside = (times >= start) & (times < start + cells * resample_seconds)
    cell = (times[inside] - start) // resample_seconds
    means = _cell_means(cell, values[:, inside], cells)
    observed = ~np.isnan(means)
    src = _fill_index(observed, np.zeros(1, dtype=np.int64), cells)[:, 0, :]
    grid = np.take_along_axis(means, np.clip(src, 0, max(cells - 1, 0)), axis=1)
    return grid.astype(np.float32), observed.mean(axis=1) if cells else np.zeros(len(values))


def cut(readings: Readings, starts: np.ndarray, spec: WindowSpec) -> tuple[np.ndarray, np.ndarray]:
    """The kept windows at `starts` (see the module docstring): X float32 (n, C, L), y float64 (n,)."""
    X, y, _ = cut_kept(readings, starts, spec)
    return X, y


def cut_kept(readings: Readings, starts: np.ndarray, spec: WindowSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As cut(), plus the kept windows' starts. Runs are laid side by side on one grid of cells,
    so every step is one vectorised pass however many runs there are."""
    starts = _sorted_starts(starts, spec)
    r, L = spec.resample_seconds, spec.cells
    grid = _Grid.build(starts, spec)
    cell, at = grid.cell_of(readings.times)
    means = _cell_means(cell, readings.channels[:, at], grid.cells)
    observed = ~np.isnan(means)
    keep = _covered(observed, grid.window_cells, L, spec.min_coverage)
    X = _gather(means, observed, grid.window_cells, L).astype(np.float32)
    rule = spec.label_rule
    if rule is None:
        y = _last_reading_label(readings, starts, spec.window_seconds)
    else:
        extreme = _cell_extremes(cell, readings.label[at], grid.cells, largest=rule.comparison == "below")
        has = ~np.isnan(extreme)[None, :]
        keep &= _covered(has, grid.window_cells, L, spec.min_coverage)
        y = _threshold_label(_gather(extreme[None, :], has, grid.window_cells, L)[:, 0, :], rule, r)
    keep &= np.isfinite(y)
    return np.ascontiguousarray(X[keep]), y[keep], starts[keep]  # models view() their input


# --- the grid of cells under the runs of windows


def _sorted_starts(starts: np.ndarray, spec: WindowSpec) -> np.ndarray:
    starts = np.unique(np.asarray(starts, dtype=np.int64))
    if len(starts) and np.any((starts - starts[0]) % spec.resample_seconds):
        raise ValueError("window starts must lie on one grid of resample_seconds")
    return starts


def _runs(starts: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of overlapping windows: each run's [lo, hi) and every start's run number."""
    new = np.ones(len(starts), dtype=bool)
    new[1:] = starts[1:] >= starts[:-1] + window
    run_of = np.cumsum(new) - 1
    last = np.r_[new[1:], True][:len(starts)]  # the last start of each run
    return starts[new], starts[last] + window, run_of


@dataclass(frozen=True)
class _Grid:
    """Every run's cells laid end to end; window_cells[w] is window w's first cell."""

    lo: np.ndarray
    hi: np.ndarray
    offsets: np.ndarray  # first cell of each run
    cells: int
    window_cells: np.ndarray
    resample_seconds: int

    @staticmethod
    def build(starts: np.ndarray, spec: WindowSpec) -> _Grid:
        r = spec.resample_seconds
        lo, hi, run_of = _runs(starts, spec.window_seconds)
        sizes = (hi - lo) // r
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        window_cells = offsets[run_of] + (starts - lo[run_of]) // r
        return _Grid(lo, hi, offsets, int(sizes.sum()), window_cells, r)

    def cell_of(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The grid cell of every reading inside a run, and which readings those are."""
        run = np.searchsorted(self.lo, times, side="right") - 1
        inside = run >= 0
        inside[inside] = times[inside] < self.hi[run[inside]]
        run = run[inside]
        return self.offsets[run] + (times[inside] - self.lo[run]) // self.resample_seconds, inside


def _cell_means(cell: np.ndarray, values: np.ndarray, cells: int) -> np.ndarray:
    """(C, cells) float64 means of each channel's non-NaN readings per cell; NaN when none."""
    channels = len(values)
    present = ~np.isnan(values)
    flat = (np.arange(channels, dtype=np.int64)[:, None] * cells + cell[None, :]).ravel()
    size = channels * cells
    sums = np.bincount(flat, weights=np.where(present, values, 0).ravel().astype(np.float64), minlength=size)
    counts = np.bincount(flat, weights=present.ravel(), minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts).reshape(channels, cells)


def _cell_extremes(cell: np.ndarray, values: np.ndarray, cells: int, *, largest: bool) -> np.ndarray:
    """(cells,) the max (or min) of each cell's non-NaN readings; NaN when none. `cell` ascends."""
    out = np.full(cells, np.nan)
    if len(cell):
        first = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
        reduce = np.fmax if largest else np.fmin
        out[cell[first]] = reduce.reduceat(values.astype(np.float64), first)
    return out


# --- per-window views


def _covered(observed: np.ndarray, window_cells: np.ndarray, L: int, min_coverage: float) -> np.ndarray:
    """Windows where every channel's observed fraction of cells is >= min_coverage."""
    counts = np.concatenate([np.zeros((len(observed), 1), dtype=np.int64), np.cumsum(observed, axis=1)], axis=1)
    fraction = (counts[:, window_cells + L] - counts[:, window_cells]) / L
    covered: np.ndarray = np.all(fraction >= min_coverage, axis=0)
    return covered


def _fill_index(observed: np.ndarray, window_cells: np.ndarray, L: int) -> np.ndarray:
    """(C, n, L) the grid cell each window cell takes its value from: itself when observed, else the
    last observed cell before it in the window, else the first after it (past the window: none)."""
    channels, cells = observed.shape
    index = np.arange(cells, dtype=np.int64)
    prev = np.maximum.accumulate(np.where(observed, index, -1), axis=1) if cells else observed.astype(np.int64)
    after = np.where(observed, index, cells)[:, ::-1]
    nxt = np.minimum.accumulate(after, axis=1)[:, ::-1] if cells else after
    J = window_cells[:, None] + np.arange(L, dtype=np.int64)[None, :]
    P = prev[:, J] if cells else np.full((channels, *J.shape), -1)
    first = nxt[:, window_cells][:, :, None] if cells else np.full((channels, len(window_cells), 1), cells)
    return np.where(P >= window_cells[None, :, None], P, first)


def _gather(values: np.ndarray, observed: np.ndarray, window_cells: np.ndarray, L: int) -> np.ndarray:
    """(n, C, L) windows of `values` (C, cells) with empty cells filled."""
    if not len(window_cells):
        return np.zeros((0, len(values), L), dtype=values.dtype)
    src = np.clip(_fill_index(observed, window_cells, L), 0, values.shape[1] - 1)
    gathered: np.ndarray = np.take_along_axis(values[:, None, :], src, axis=2).transpose(1, 0, 2)
    return gathered


def _last_reading_label(readings: Readings, starts: np.ndarray, window: int) -> np.ndarray:
    last = np.searchsorted(readings.times, starts + window, side="left") - 1
    has = last >= np.searchsorted(readings.times, starts, side="left")
    return np.where(has, readings.label[np.clip(last, 0, None)] if len(readings.times) else np.nan, np.nan)


def _threshold_label(extremes: np.ndarray, rule: ThresholdLabel, resample_seconds: int) -> np.ndarray:
    """1.0 where some for_seconds / resample_seconds consecutive cells of a window qualify."""
    need = rule.for_seconds // resample_seconds
    hit = extremes < rule.threshold if rule.comparison == "below" else extremes > rule.threshold
    counts = np.concatenate([np.zeros((len(hit), 1), dtype=np.int64), np.cumsum(hit, axis=1)], axis=1)
    label: np.ndarray = np.any(counts[:, need:] - counts[:, :-need] == need, axis=1).astype(np.float64)
    return label
