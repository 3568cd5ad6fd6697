"""mean: noisy sum / noisy count per cell, clamped to the bounds; its interval from both
components' intervals (each at alpha / 2)."""

from __future__ import annotations

from cleanroom.statistics.engine.answer import Cell
from cleanroom.statistics.engine.compute import (
    Cells,
    component_alpha,
    count_error,
    half_width,
    largest_magnitude,
    noisy_counts,
    noisy_sums,
    ratio,
    sum_error,
)
from cleanroom.statistics.engine.plan import Plan, Step


def compute(cells: Cells) -> list[Cell]:
    values, (lo, hi) = cells.clamped()
    alpha = component_alpha(cells.plan.query.kind)
    counts, count_widths = noisy_counts(cells, alpha=alpha)
    sums, sum_width = noisy_sums(cells, values, largest_magnitude(lo, hi), cells.plan.required_step("sum"), alpha=alpha)
    out = []
    for key, n, a_n, s in zip(cells.keys, counts, count_widths, sums):
        mean = min(max(s / max(n, 1), lo), hi)
        if n - a_n < 1:  # the count itself may be zero: nothing better than the whole range
            out.append(Cell(key, "mean", float(mean), float(hi - lo)))
            continue
        interval = ratio((s - sum_width, s + sum_width), (n - a_n, n + a_n))
        out.append(Cell(key, "mean", float(mean), float(min(half_width(mean, interval), hi - lo))))
    return out


def error(plan: Plan, step: Step, *, integer: bool, alpha: float) -> dict[str, float]:
    if step.name == "count":
        return count_error(plan, step, alpha=alpha)
    return sum_error(plan, step, alpha=alpha, magnitude=largest_magnitude)
