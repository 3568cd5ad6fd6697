"""sum: the noisy sum of the clamped values per cell, in fixed point."""

from __future__ import annotations

from cleanroom.statistics.engine.answer import Cell
from cleanroom.statistics.engine.compute import ALPHA, Cells, largest_magnitude, noisy_sums, sum_error
from cleanroom.statistics.engine.plan import Plan, Step


def compute(cells: Cells) -> list[Cell]:
    values, (lo, hi) = cells.clamped()
    sums, width = noisy_sums(cells, values, largest_magnitude(lo, hi), cells.plan.required_step("sum"), alpha=ALPHA)
    return [Cell(k, "sum", float(s), width) for k, s in zip(cells.keys, sums)]


def error(plan: Plan, step: Step, *, integer: bool, alpha: float) -> dict[str, float]:
    return sum_error(plan, step, alpha=alpha, magnitude=largest_magnitude)
