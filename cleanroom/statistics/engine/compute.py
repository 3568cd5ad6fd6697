"""What every statistic kind computes with, over bounded rows already assigned to cells (group
keys): noisy counts and fixed-point sums, their intervals, and the errors a dry run states. Each
kind's own computation is its module in cleanroom.statistics.engine.kinds.

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
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cleanroom.statistics.engine import mechanisms
from cleanroom.statistics.engine.kinds import kind_spec
from cleanroom.statistics.engine.plan import Plan, Step
from cleanroom.statistics.engine.prepared import count_codes

ALPHA = 1 - mechanisms.CONFIDENCE
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
    selected: tuple[list[int], mechanisms.Noise] | None = None  # noisy counts from the τ-threshold step, and their noise
    trace: list[tuple[str, object]] = field(default_factory=list)  # (step, calibrated mechanism)
    known_counts: np.ndarray | None = None     # rows per cell, when already counted (kept in step with codes)

    def counts(self) -> np.ndarray:
        if self.known_counts is not None:
            return self.known_counts
        if len(self.keys) == 1:  # one cell: every row is in it
            return np.array([self.codes.size], dtype=np.int64)
        return count_codes(self.codes, len(self.keys))

    def clamped(self) -> tuple[np.ndarray, tuple[float, float]]:
        """A numeric kind's clamped values and the bounds they lie within (the engine clamps first)."""
        if self.values is None or self.bounds is None:
            raise mechanisms.internal_failure()
        return self.values, self.bounds


def component_alpha(kind: str) -> float:
    """Each of a statistic's k noisy components gets alpha / k, so all hold together at 95%."""
    return ALPHA / kind_spec(kind).components


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
        counts, select_noise = cells.selected
        return counts, [select_noise.half_width(alpha=alpha)] * len(cells.keys)
    noise = count_noise(cells.plan, cells.plan.required_step("count"))
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


def ratio(num: tuple[float, float], den: tuple[float, float]) -> tuple[float, float]:
    """The interval of num / den from the intervals of both (den > 0)."""
    corners = [a / b for a in num for b in den]
    return min(corners), max(corners)


def half_width(estimate: float, interval: tuple[float, float]) -> float:
    return max(estimate - interval[0], interval[1] - estimate, 0.0)


# --- expected errors (dry run) -------------------------------------------------------------------


def count_error(plan: Plan, step: Step, *, alpha: float) -> dict[str, float]:
    return {step.name: count_noise(plan, step).half_width(alpha=alpha)}


def sum_error(plan: Plan, step: Step, *, alpha: float, magnitude: Callable[[float, float], float]) -> dict[str, float]:
    """A noisy sum's half-width in value units, for values within ±magnitude(lo, hi); per unit of
    the bound's magnitude ("<step>.per_unit_bound") when the bounds are still to be estimated."""
    bounds = plan.query.bounds
    if bounds is None:
        noise, bits = sum_noise(plan, 1.0, step)
        return {f"{step.name}.per_unit_bound": noise.half_width(alpha=alpha) * 2.0**-bits}
    noise, bits = sum_noise(plan, magnitude(*bounds), step)
    return {step.name: noise.half_width(alpha=alpha) * 2.0**-bits}


def largest_magnitude(lo: float, hi: float) -> float:
    return max(abs(lo), abs(hi))
