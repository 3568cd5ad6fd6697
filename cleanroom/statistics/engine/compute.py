"""The statistics themselves, over bounded rows already assigned to cells (group keys).

Sensitivities, all for one patient's at most L = plan.rows rows (spread over any cells):
  counts          L1 ≤ L (and L2 ≤ L) over the vector of cells
  clamped sums    L1 ≤ L·M with M = max(|lo|, |hi|) in fixed point (L2 ≤ L·M as well)
  centred squares L1 ≤ L·R² with R = (hi - lo) / 2, after subtracting the public midpoint
  quantiles       ≤ L values leave or join a cell's vector (symmetric distance L); the
                  quantile's privacy map is linear in that distance, so the per-cell losses of a
                  patient spread over cells add up to at most the loss at L
Intervals of ratios (mean, variance) come from interval arithmetic over the components' own
intervals, each at 95%/k so that all k hold together with probability ≥ 95% (union bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cleanroom.statistics.engine import mechanisms
from cleanroom.statistics.engine.answer import Cell
from cleanroom.statistics.engine.plan import Plan, Step
from cleanroom.statistics.engine.prepared import count_codes

ALPHA = 1 - mechanisms.CONFIDENCE
QUANTILE_CANDIDATES = 1024
_EXACT_FLOAT_ROWS = 1 << (52 - mechanisms.FIXED_POINT_BITS)  # rows × 2^24 < 2^53


@dataclass
class Cells:
    """Bounded rows, each with a cell index into `keys`, and its clamped value when numeric."""

    plan: Plan
    keys: list[tuple[str, ...]]
    codes: np.ndarray
    values: np.ndarray | None = None
    bounds: tuple[float, float] | None = None
    integer: bool = False
    selected: list[int] | None = None          # noisy counts from the τ-threshold step
    select_noise: mechanisms.Noise | None = None
    trace: list[tuple[str, object]] = field(default_factory=list)  # (step, calibrated mechanism)
    known_counts: np.ndarray | None = None     # rows per cell, when already counted (kept in step with codes)

    def counts(self) -> np.ndarray:
        if self.known_counts is not None:
            return self.known_counts
        if len(self.keys) == 1:  # one cell: every row is in it
            return np.array([self.codes.size], dtype=np.int64)
        return count_codes(self.codes, len(self.keys))


def component_alpha(kind: str) -> float:
    """Each of a statistic's k noisy components gets alpha / k, so all hold together at 95%."""
    return ALPHA / {"mean": 2, "variance": 3}.get(kind, 1)


def count_noise(plan: Plan, step: Step) -> mechanisms.Noise:
    return mechanisms.calibrate(sensitivity=plan.rows, epsilon=step.epsilon, delta=step.delta, gaussian=plan.gaussian)


def sum_noise(plan: Plan, magnitude: float, step: Step) -> tuple[mechanisms.Noise, int]:
    """Noise for sums of values within ±magnitude, in fixed point with 2^-bits resolution."""
    bits = mechanisms.fixed_point_bits(magnitude)
    sensitivity = plan.rows * mechanisms.fixed_magnitude(magnitude, bits)
    noise = mechanisms.calibrate(sensitivity=sensitivity, epsilon=step.epsilon, delta=step.delta, gaussian=plan.gaussian)
    return noise, bits


def noisy_counts(cells: Cells, *, alpha: float) -> tuple[list[int], list[float]]:
    """Noisy count per cell and its half-width: the threshold's counts when keys were selected."""
    if cells.selected is not None:
        width = cells.select_noise.half_width(alpha=alpha)
        return cells.selected, [width] * len(cells.keys)
    noise = count_noise(cells.plan, cells.plan.step("count"))
    cells.trace.append(("count", noise))
    return mechanisms.release(cells.counts().tolist(), noise), [noise.half_width(alpha=alpha)] * len(cells.keys)


def noisy_sums(cells: Cells, values: np.ndarray, magnitude: float, step: Step, *, alpha: float) -> tuple[np.ndarray, float]:
    """Per-cell noisy sums of values within ±magnitude, via fixed point; and their half-width."""
    noise, bits = sum_noise(cells.plan, magnitude, step)
    totals = _cell_totals(cells, values, bits)  # exact: |fixed| ≤ 2^24 per row
    cells.trace.append((step.name, noise))
    cells.trace.append((step.name + ".resolution", math.ldexp(1.0, -bits)))
    noisy = np.asarray(mechanisms.release(totals.tolist(), noise), dtype=np.float64)
    return np.ldexp(noisy, -bits), math.ldexp(noise.half_width(alpha=alpha), -bits)


def _cell_totals(cells: Cells, values: np.ndarray, bits: int) -> np.ndarray:
    """Exact int64 sums per cell of the values in fixed point, round(x·2^k) (ldexp is exact; rint
    rounds half to even). Below _EXACT_FLOAT_ROWS rows every partial sum is an integer under
    2^53, so float64 adds the rounded values exactly and no int64 copy is needed."""
    scaled = np.ldexp(np.asarray(values, dtype=np.float64), bits)
    np.rint(scaled, out=scaled)
    if scaled.size > _EXACT_FLOAT_ROWS:
        fixed = scaled.astype(np.int64)
        if len(cells.keys) == 1:
            return np.array([fixed.sum()], dtype=np.int64)
        totals = np.zeros(len(cells.keys), dtype=np.int64)
        np.add.at(totals, cells.codes, fixed)
        return totals
    if len(cells.keys) == 1:
        return np.array([scaled.sum()], dtype=np.float64).astype(np.int64)
    return np.bincount(cells.codes, weights=scaled, minlength=len(cells.keys)).astype(np.int64)


def count_cells(cells: Cells) -> list[Cell]:
    values, widths = noisy_counts(cells, alpha=ALPHA)
    return [Cell(k, "count", float(v), w) for k, v, w in zip(cells.keys, values, widths)]


def sum_cells(cells: Cells) -> list[Cell]:
    lo, hi = cells.bounds
    sums, width = noisy_sums(cells, cells.values, max(abs(lo), abs(hi)), cells.plan.step("sum"), alpha=ALPHA)
    return [Cell(k, "sum", float(s), width) for k, s in zip(cells.keys, sums)]


def _ratio(num: tuple[float, float], den: tuple[float, float]) -> tuple[float, float]:
    corners = [a / b for a in num for b in den]
    return min(corners), max(corners)


def _half_width(estimate: float, interval: tuple[float, float]) -> float:
    return max(estimate - interval[0], interval[1] - estimate, 0.0)


def mean_cells(cells: Cells) -> list[Cell]:
    """Noisy sum / noisy count, clamped to the bounds; interval from both components' intervals."""
    lo, hi = cells.bounds
    alpha = component_alpha("mean")
    counts, count_widths = noisy_counts(cells, alpha=alpha)
    sums, sum_width = noisy_sums(cells, cells.values, max(abs(lo), abs(hi)), cells.plan.step("sum"), alpha=alpha)
    out = []
    for key, n, a_n, s in zip(cells.keys, counts, count_widths, sums):
        mean = min(max(s / max(n, 1), lo), hi)
        if n - a_n < 1:  # the count itself may be zero: nothing better than the whole range
            out.append(Cell(key, "mean", float(mean), float(hi - lo)))
            continue
        interval = _ratio((s - sum_width, s + sum_width), (n - a_n, n + a_n))
        out.append(Cell(key, "mean", float(mean), float(min(_half_width(mean, interval), hi - lo))))
    return out


def variance_cells(cells: Cells) -> list[Cell]:
    """Var = E[y²] - E[y]² over y = x - midpoint (centring shrinks the squares' sensitivity)."""
    lo, hi = cells.bounds
    half_range = (hi - lo) / 2
    centred = cells.values - (lo + hi) / 2
    alpha = component_alpha("variance")
    counts, count_widths = noisy_counts(cells, alpha=alpha)
    sums, w1 = noisy_sums(cells, centred, half_range, cells.plan.step("sum"), alpha=alpha)
    squares, w2 = noisy_sums(cells, centred**2, half_range**2, cells.plan.step("sum_of_squares"), alpha=alpha)
    cap = half_range**2
    out = []
    for key, n, a_n, s1, s2 in zip(cells.keys, counts, count_widths, sums, squares):
        n_safe = max(n, 1)
        variance = min(max(s2 / n_safe - (s1 / n_safe) ** 2, 0.0), cap)
        width = cap if n - a_n < 1 else _variance_width(variance, (n - a_n, n + a_n), (s1 - w1, s1 + w1), (s2 - w2, s2 + w2))
        out.append(Cell(key, "variance", float(variance), float(min(width, cap))))
    return out


def _variance_width(variance: float, n: tuple[float, float], s1: tuple[float, float], s2: tuple[float, float]) -> float:
    mean = _ratio(s1, n)
    second = _ratio((max(s2[0], 0.0), max(s2[1], 0.0)), n)
    mean_sq_low = 0.0 if mean[0] <= 0 <= mean[1] else min(mean[0] ** 2, mean[1] ** 2)
    mean_sq_high = max(mean[0] ** 2, mean[1] ** 2)
    return _half_width(variance, (second[0] - mean_sq_high, second[1] - mean_sq_low))


def quantile_candidates(bounds: tuple[float, float], *, integer: bool) -> tuple[float, ...]:
    """Public candidates from the bounds only: every integer when few, else an even grid."""
    lo, hi = bounds
    if integer and math.floor(hi) - math.ceil(lo) < QUANTILE_CANDIDATES:
        return tuple(float(v) for v in range(math.ceil(lo), math.floor(hi) + 1))
    return tuple(float(v) for v in np.linspace(lo, hi, QUANTILE_CANDIDATES))


def quantile_cells(cells: Cells) -> list[Cell]:
    candidates = quantile_candidates(cells.bounds, integer=cells.integer)
    order = np.argsort(cells.codes, kind="stable")
    starts = np.searchsorted(cells.codes[order], np.arange(len(cells.keys) + 1))
    out = []
    for step in cells.plan.quantile_steps():
        selector = mechanisms.calibrate_quantile(rows=cells.plan.rows, level=step.level, epsilon=step.epsilon)
        cells.trace.append((step.name, selector))
        width = selector.rank_half_width(len(candidates))
        for index, key in enumerate(cells.keys):
            group = cells.values[order[starts[index]:starts[index + 1]]]
            value = mechanisms.release_quantile(group, candidates, selector)
            out.append(Cell(key, "quantile", value, width, unit="rows", level=step.level))
    return out


COMPUTE = {
    "count": count_cells,
    "histogram": count_cells,
    "sum": sum_cells,
    "mean": mean_cells,
    "variance": variance_cells,
    "quantile": quantile_cells,
}
