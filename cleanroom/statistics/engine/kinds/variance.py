"""variance: Var = E[y²] - E[y]² over y = x - midpoint (centring shrinks the squares'
sensitivity), from a noisy count, sum and sum of squares per cell (each at alpha / 3)."""

from __future__ import annotations

from cleanroom.statistics.engine.answer import Cell
from cleanroom.statistics.engine.compute import (
    Cells,
    component_alpha,
    count_error,
    half_width,
    noisy_counts,
    noisy_sums,
    ratio,
    sum_error,
)
from cleanroom.statistics.engine.plan import Plan, Step


def compute(cells: Cells) -> list[Cell]:
    values, (lo, hi) = cells.clamped()
    half_range = (hi - lo) / 2
    centred = values - (lo + hi) / 2
    alpha = component_alpha(cells.plan.query.kind)
    counts, count_widths = noisy_counts(cells, alpha=alpha)
    sums, w1 = noisy_sums(cells, centred, half_range, cells.plan.required_step("sum"), alpha=alpha)
    squares, w2 = noisy_sums(cells, centred**2, half_range**2, cells.plan.required_step("sum_of_squares"), alpha=alpha)
    cap = half_range**2
    out = []
    for key, n, a_n, s1, s2 in zip(cells.keys, counts, count_widths, sums, squares):
        n_safe = max(n, 1)
        variance = min(max(s2 / n_safe - (s1 / n_safe) ** 2, 0.0), cap)
        width = cap if n - a_n < 1 else _width(variance, (n - a_n, n + a_n), (s1 - w1, s1 + w1), (s2 - w2, s2 + w2))
        out.append(Cell(key, "variance", float(variance), float(min(width, cap))))
    return out


def _width(variance: float, n: tuple[float, float], s1: tuple[float, float], s2: tuple[float, float]) -> float:
    mean = ratio(s1, n)
    second = ratio((max(s2[0], 0.0), max(s2[1], 0.0)), n)
    mean_sq_low = 0.0 if mean[0] <= 0 <= mean[1] else min(mean[0] ** 2, mean[1] ** 2)
    mean_sq_high = max(mean[0] ** 2, mean[1] ** 2)
    return half_width(variance, (second[0] - mean_sq_high, second[1] - mean_sq_low))


def _half_range(lo: float, hi: float) -> float:
    return (hi - lo) / 2


def _half_range_squared(lo: float, hi: float) -> float:
    return ((hi - lo) / 2) ** 2


def error(plan: Plan, step: Step, *, integer: bool, alpha: float) -> dict[str, float]:
    if step.name == "count":
        return count_error(plan, step, alpha=alpha)
    magnitude = _half_range if step.name == "sum" else _half_range_squared
    return sum_error(plan, step, alpha=alpha, magnitude=magnitude)
