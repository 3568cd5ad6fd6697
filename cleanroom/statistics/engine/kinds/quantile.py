"""quantile: one private-quantile selection (OpenDP's exponential mechanism over public
candidates) per requested level and cell; its half-width is in rows of rank."""

from __future__ import annotations

import math

import numpy as np

from cleanroom.statistics.engine import mechanisms
from cleanroom.statistics.engine.answer import Cell
from cleanroom.statistics.engine.compute import Cells
from cleanroom.statistics.engine.plan import Plan, Step

QUANTILE_CANDIDATES = 1024


def quantile_candidates(bounds: tuple[float, float], *, integer: bool) -> tuple[float, ...]:
    """Public candidates from the bounds only: every integer when few, else an even grid."""
    lo, hi = bounds
    if integer and math.floor(hi) - math.ceil(lo) < QUANTILE_CANDIDATES:
        return tuple(float(v) for v in range(math.ceil(lo), math.floor(hi) + 1))
    return tuple(float(v) for v in np.linspace(lo, hi, QUANTILE_CANDIDATES))


def compute(cells: Cells) -> list[Cell]:
    values, bounds = cells.clamped()
    candidates = quantile_candidates(bounds, integer=cells.integer)
    order = np.argsort(cells.codes, kind="stable")
    starts = np.searchsorted(cells.codes[order], np.arange(len(cells.keys) + 1))
    out = []
    for step in cells.plan.steps:
        if step.level is None:  # the bounds or τ-threshold step
            continue
        selector = mechanisms.calibrate_quantile(rows=cells.plan.rows, level=step.level, epsilon=step.epsilon)
        cells.trace.append((step.name, selector))
        width = selector.rank_half_width(len(candidates))
        for index, key in enumerate(cells.keys):
            group = values[order[starts[index]:starts[index + 1]]]
            value = mechanisms.release_quantile(group, candidates, selector)
            out.append(Cell(key, "quantile", value, width, unit="rows", level=step.level))
    return out


def error(plan: Plan, step: Step, *, integer: bool, alpha: float) -> dict[str, float]:
    if step.level is None:
        raise ValueError("a quantile step has a level")
    selector = mechanisms.calibrate_quantile(rows=plan.rows, level=step.level, epsilon=step.epsilon)
    bounds = plan.query.bounds
    size = len(quantile_candidates(bounds, integer=integer)) if bounds else QUANTILE_CANDIDATES
    return {f"{step.name}.rank_rows": selector.rank_half_width(size)}
