"""Windows over one patient's readings (trainer/windows.py) against a slow, obvious reference.

The reference walks cells and windows with Python loops, straight from the definitions in the
module docstring; the vectorised code must agree with it on irregular, gappy, NaN-holed readings,
on sparse and overlapping starts, and on the hand-made boundary cases below.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
import pytest

from cleanroom.domain.streams import ThresholdLabel, WindowSpec
from cleanroom.trainer import windows
from cleanroom.trainer.windows import Readings

# --- the reference


def ref_cells(times, values, start, cells, r, reduce=np.mean):
    """Per cell the reduce of its non-NaN readings, None when none."""
    out = []
    for i in range(cells):
        lo, hi = start + i * r, start + (i + 1) * r
        got = [float(v) for t, v in zip(times, values) if lo <= t < hi and not math.isnan(v)]
        out.append(float(reduce(got)) if got else None)
    return out


def ref_fill(cells):
    filled = []
    for i, v in enumerate(cells):
        if v is None:
            before = [c for c in cells[:i] if c is not None]
            after = [c for c in cells[i + 1:] if c is not None]
            v = before[-1] if before else (after[0] if after else math.nan)
        filled.append(v)
    return filled


def ref_window(readings: Readings, s: int, spec: WindowSpec):
    """(x (C, L), y) of the window at s, or None when it is not kept."""
    r, L, W = spec.resample_seconds, spec.cells, spec.window_seconds
    a, b = bisect.bisect_left(readings.times.tolist(), s), bisect.bisect_left(readings.times.tolist(), s + W)
    readings = Readings(readings.times[a:b], readings.channels[:, a:b], readings.label[a:b])  # speed only
    t = readings.times.tolist()
    grids = []
    for channel in readings.channels:
        cells = ref_cells(t, channel.tolist(), s, L, r)
        if sum(c is not None for c in cells) / L < spec.min_coverage:
            return None
        grids.append(ref_fill(cells))
    rule = spec.label_rule
    if rule is None:
        inside = [i for i, ti in enumerate(t) if s <= ti < s + W]
        y = float(readings.label[inside[-1]]) if inside else math.nan
    else:
        cells = ref_cells(t, readings.label.tolist(), s, L, r, max if rule.comparison == "below" else min)
        if sum(c is not None for c in cells) / L < spec.min_coverage:
            return None
        filled = ref_fill(cells)
        ok = [(v < rule.threshold) if rule.comparison == "below" else (v > rule.threshold) for v in filled]
        need = rule.for_seconds // r
        y = float(any(all(ok[i:i + need]) for i in range(L - need + 1)))
    if math.isnan(y):
        return None
    return np.array(grids, dtype=np.float32), y


def ref_starts(first, last, spec):
    out, s = [], first
    while s + spec.window_seconds - spec.resample_seconds <= last:
        out.append(s)
        s += spec.stride_seconds
    return out


def random_readings(rng: np.random.Generator, n: int, channels: int, *, gap_every: int = 40) -> Readings:
    steps = rng.integers(1, 4, size=n)
    steps[rng.random(n) < 1 / gap_every] += rng.integers(20, 200)  # sensor gaps
    times = 1_700_000_000 + np.cumsum(steps).astype(np.int64)
    values = rng.normal(90, 5, size=(channels, n)).astype(np.float32)
    values[rng.random((channels, n)) < 0.2] = np.nan
    label = rng.integers(0, 2, size=n).astype(np.float64)
    label[rng.random(n) < 0.05] = np.nan
    return Readings(times, values, label)


def assert_matches_reference(readings: Readings, starts: np.ndarray, spec: WindowSpec) -> int:
    X, y, kept = windows.cut_kept(readings, starts, spec)
    expected = {s: ref_window(readings, s, spec) for s in sorted(set(starts.tolist()))}
    expected = {s: e for s, e in expected.items() if e is not None}
    assert kept.tolist() == list(expected)
    for x, label, s in zip(X, y, kept.tolist()):
        np.testing.assert_allclose(x, expected[s][0], rtol=1e-5)
        assert label == expected[s][1]
    assert X.dtype == np.float32 and y.dtype == np.float64 and X.flags.c_contiguous
    assert X.shape == (len(kept), len(readings.channels), spec.cells)
    return len(kept)


# --- against the reference


@pytest.mark.parametrize("seed", range(6))
def test_windows_match_the_reference_on_random_gappy_readings(seed: int) -> None:
    rng = np.random.default_rng(seed)
    readings = random_readings(rng, 1500, channels=int(rng.integers(1, 4)))
    r = int(rng.choice([1, 5, 10]))
    spec = WindowSpec(window_seconds=r * int(rng.integers(3, 12)), stride_seconds=r * int(rng.integers(1, 8)),
                      resample_seconds=r, min_coverage=float(rng.choice([0.2, 0.5, 0.9])))
    starts = windows.window_starts(int(readings.times[0]), int(readings.times[-1]), spec)
    assert starts.tolist() == ref_starts(int(readings.times[0]), int(readings.times[-1]), spec)
    assert assert_matches_reference(readings, starts, spec) > 0
    sparse = windows.choose_starts(starts, 7, rng)  # far apart: runs of their own
    assert_matches_reference(readings, sparse, spec)


@pytest.mark.parametrize("comparison", ["below", "above"])
@pytest.mark.parametrize("seed", range(3))
def test_threshold_labels_match_the_reference(comparison: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    readings = random_readings(rng, 1200, channels=2)
    rule_channel = readings.channels[1].astype(np.float64)
    readings = Readings(readings.times, readings.channels, rule_channel)
    spec = WindowSpec(60, 20, 5, 0.3, ThresholdLabel("spo2", comparison, 88.0 if comparison == "below" else 92.0, 15))
    starts = windows.window_starts(int(readings.times[0]), int(readings.times[-1]), spec)
    assert assert_matches_reference(readings, starts, spec) > 0
    _, y = windows.cut(readings, starts, spec)
    assert 0 < y.mean() < 1  # both classes occur: the test can tell the rules apart


def test_resample_matches_the_reference() -> None:
    rng = np.random.default_rng(7)
    readings = random_readings(rng, 400, channels=3, gap_every=10)
    start, cells, r = int(readings.times[0]) + 3, 40, 7
    grid, observed = windows.resample(readings.times, readings.channels, start, cells, r)
    for c, channel in enumerate(readings.channels):
        raw = ref_cells(readings.times.tolist(), channel.tolist(), start, cells, r)
        np.testing.assert_allclose(grid[c], ref_fill(raw), rtol=1e-5)
        assert observed[c] == sum(v is not None for v in raw) / cells


# --- hand-made cases


def test_cell_means_and_fills_from_before_then_after() -> None:
    times = np.array([0, 1, 2, 15, 31, 32], dtype=np.int64)
    values = np.array([[1, 2, np.nan, 10, 20, 40]], dtype=np.float32)
    grid, observed = windows.resample(times, values, 0, 5, 10)  # cells [0,10) [10,20) [20,30) [30,40) [40,50)
    assert grid.tolist() == [[1.5, 10.0, 10.0, 30.0, 30.0]]
    assert observed.tolist() == [0.6]
    grid, _ = windows.resample(times, values, -20, 4, 10)  # two empty cells before the first reading
    assert grid.tolist() == [[1.5, 1.5, 1.5, 10.0]]


def test_a_window_depends_only_on_its_own_readings() -> None:
    """Empty leading cells take the first reading after them in the window, never one before it."""
    spec = WindowSpec(40, 10, 10, 0.25)
    times = np.array([0, 25, 100], dtype=np.int64)
    readings = Readings(times, np.array([[5.0, 7.0, 9.0]], dtype=np.float32), np.array([0.0, 1.0, 0.0]))
    X, y = windows.cut(readings, np.array([10]), spec)
    assert X[0, 0].tolist() == [7.0, 7.0, 7.0, 7.0] and y.tolist() == [1.0]
    alone = Readings(times[1:2], readings.channels[:, 1:2], readings.label[1:2])
    np.testing.assert_array_equal(windows.cut(alone, np.array([10]), spec)[0], X)


def test_coverage_keeps_exactly_min_coverage_and_drops_less() -> None:
    spec = WindowSpec(40, 40, 10, 0.5)  # 4 cells: 2 observed is exactly 0.5
    times = np.array([0, 5, 15, 40, 75], dtype=np.int64)  # window 0: cells 0, 1; window 40: cells 0, 3
    values = np.array([[1, 1, 1, 1, 1], [1, np.nan, 1, 1, np.nan]], dtype=np.float32)
    readings = Readings(times, values, np.ones(5))
    _, _, kept = windows.cut_kept(readings, np.array([0, 40]), spec)
    assert kept.tolist() == [0]  # window 40: channel 1 has one cell of four
    strict = WindowSpec(40, 40, 10, 0.51)
    assert windows.cut_kept(readings, np.array([0, 40]), strict)[2].tolist() == []


def test_the_label_column_is_read_at_the_window_s_last_reading() -> None:
    spec = WindowSpec(30, 30, 10, 0.1)
    times = np.array([0, 10, 29, 30, 59], dtype=np.int64)
    label = np.array([0.0, 0.0, 1.0, 0.0, np.nan])
    readings = Readings(times, np.ones((1, 5), dtype=np.float32), label)
    _, y, kept = windows.cut_kept(readings, np.array([0, 30]), spec)
    assert kept.tolist() == [0] and y.tolist() == [1.0]  # the window at 30 ends on a missing label: dropped


@pytest.mark.parametrize(("run", "expected"), [(5, 1.0), (6, 1.0), (4, 0.0)])
def test_for_seconds_needs_that_many_cells_in_a_row(run: int, expected: float) -> None:
    spec = WindowSpec(120, 120, 10, 0.5, ThresholdLabel("spo2", "below", 90.0, 50))  # 5 cells of 10 s
    values = np.full(12, 95.0)
    values[3:3 + run] = 85.0
    times = np.arange(12, dtype=np.int64) * 10
    readings = Readings(times, values[None, :].astype(np.float32), values)
    assert windows.cut(readings, np.array([0]), spec)[1].tolist() == [expected]


def test_a_cell_counts_only_when_all_its_readings_pass_the_threshold() -> None:
    spec = WindowSpec(60, 60, 20, 0.5, ThresholdLabel("hr", "above", 100.0, 40))
    times = np.arange(0, 60, 5, dtype=np.int64)  # four readings a cell
    values = np.full(12, 120.0)
    readings = Readings(times, values[None, :].astype(np.float32), values)
    assert windows.cut(readings, np.array([0]), spec)[1].tolist() == [1.0]
    values[6] = 100.0  # not strictly above: cell 1 fails, no two cells in a row remain
    readings = Readings(times, values[None, :].astype(np.float32), values)
    assert windows.cut(readings, np.array([0]), spec)[1].tolist() == [0.0]


def test_the_rule_channel_needs_coverage_too() -> None:
    spec = WindowSpec(40, 40, 10, 0.5, ThresholdLabel("spo2", "below", 90.0, 10))
    times = np.arange(0, 40, 5, dtype=np.int64)
    rule = np.full(8, np.nan)
    rule[0] = 80.0  # one cell of four
    readings = Readings(times, np.ones((1, 8), dtype=np.float32), rule)
    assert len(windows.cut(readings, np.array([0]), spec)[1]) == 0


def test_window_starts_fit_the_span_on_the_stride_grid() -> None:
    spec = WindowSpec(60, 30, 10, 0.5)
    assert windows.window_starts(100, 150, spec).tolist() == [100]  # last cell [150, 160) starts at 150
    assert windows.window_starts(100, 149, spec).tolist() == []
    assert windows.window_starts(100, 209, spec).tolist() == [100, 130]
    assert windows.window_starts(100, 210, spec).tolist() == [100, 130, 160]
    assert windows.window_starts(100, 210, spec).dtype == np.int64


def test_choose_starts_is_uniform_without_replacement_and_at_most_k() -> None:
    rng = np.random.default_rng(3)
    starts = np.arange(20, dtype=np.int64) * 10
    assert windows.choose_starts(starts[:3], 5, rng).tolist() == starts[:3].tolist()
    counts = np.zeros(20)
    for _ in range(4000):
        chosen = windows.choose_starts(starts, 5, rng)
        assert len(set(chosen.tolist())) == 5 and np.all(np.diff(chosen) > 0)
        counts[chosen // 10] += 1
    expected = 4000 * 5 / 20
    assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected))


def test_runs_merge_overlapping_windows_only() -> None:
    spec = WindowSpec(60, 20, 10, 0.5)
    assert windows.runs(np.array([100, 0, 20, 60, 300]), spec) == [(0, 160), (300, 360)]
    assert windows.runs(np.array([], dtype=np.int64), spec) == []


def test_starts_off_the_resample_grid_are_refused() -> None:
    spec = WindowSpec(60, 20, 10, 0.5)
    readings = Readings(np.arange(100, dtype=np.int64), np.ones((1, 100), dtype=np.float32), np.ones(100))
    with pytest.raises(ValueError, match="grid"):
        windows.cut(readings, np.array([0, 15]), spec)


def test_no_starts_or_no_readings_give_no_windows() -> None:
    spec = WindowSpec(60, 20, 10, 0.5)
    empty = Readings(np.zeros(0, dtype=np.int64), np.zeros((2, 0), dtype=np.float32), np.zeros(0))
    for readings, starts in ((empty, np.array([0, 20])), (empty, np.zeros(0, dtype=np.int64))):
        X, y = windows.cut(readings, starts, spec)
        assert X.shape == (0, 2, 6) and y.shape == (0,)


def test_the_module_loads_nothing_the_trainer_s_tripwire_refuses() -> None:
    """Imported alone, windows.py brings in numpy and cleanroom only: no pyarrow, no enclave_sim."""
    import subprocess
    import sys

    code = ("import cleanroom.trainer.windows; from cleanroom.trainer.guard import foreign_modules; "
            "import sys; print(foreign_modules(), [m for m in sys.modules if m.startswith(('pyarrow', 'enclave_sim'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] []"
