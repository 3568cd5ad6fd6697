"""count (and histogram, a count per bin): noisy rows per cell; one noisy count each."""

from __future__ import annotations

from cleanroom.statistics.engine.answer import Cell
from cleanroom.statistics.engine.compute import ALPHA, Cells, count_error, noisy_counts
from cleanroom.statistics.engine.plan import Plan, Step


def compute(cells: Cells) -> list[Cell]:
    values, widths = noisy_counts(cells, alpha=ALPHA)
    return [Cell(k, "count", float(v), w) for k, v, w in zip(cells.keys, values, widths)]


def error(plan: Plan, step: Step, *, integer: bool, alpha: float) -> dict[str, float]:
    return count_error(plan, step, alpha=alpha)
