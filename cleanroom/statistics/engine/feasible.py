"""Whether OpenDP can calibrate every step of a plan: checked before any budget is reserved.

A query can pass the range checks of `validate_query` and still ask for something the mechanisms
cannot certify: a τ-threshold needs a δ share of at least about 1e-15 (below it OpenDP finds no
threshold), and an ε share near the float floor makes OpenDP's scale search fail. Such a query is
the caller's mistake, not the service's failure, so it is refused as BAD_REQUEST in words, and a
refused query costs nothing. Calibration is data-free and cached, so the check is cheap.
"""

from __future__ import annotations

from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.statistics.engine import dryrun
from cleanroom.statistics.engine.plan import Plan

MIN_STEP_EPSILON = 1e-9     # each mechanism step's ε share; noise is then 1e9 × sensitivity already
MIN_THRESHOLD_DELTA = 1e-15  # each τ-threshold step's δ share (OpenDP certifies none below ~1e-16)


def check_feasible(plan: Plan, *, integer: bool) -> None:
    """Raise BAD_REQUEST when a step's share is below what its mechanism can be calibrated for."""
    violations = _share_violations(plan)
    if not violations:
        violations = _calibration_violations(plan, integer=integer)
    if violations:
        raise bad_request("the statistics query asks for more than the mechanism can calibrate", *violations)


def _share_violations(plan: Plan) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    statistic_steps = [s for s in plan.steps if s.name != "bounds"]
    bounds_step = plan.step("bounds")
    if bounds_step is not None and _below(bounds_step.epsilon, MIN_STEP_EPSILON):
        violations.append(FieldViolation("bounds_epsilon", f"must be at least {MIN_STEP_EPSILON:g}"))
    if any(_below(s.epsilon, MIN_STEP_EPSILON) for s in statistic_steps):
        rule = f"must leave at least {MIN_STEP_EPSILON:g} to each of this query's {len(statistic_steps)} noisy steps"
        violations.append(FieldViolation("epsilon", rule + (" after bounds_epsilon" if bounds_step else "")))
    select = plan.step("select")
    if select is not None and _below(select.delta, MIN_THRESHOLD_DELTA):
        shares = round(plan.delta / select.delta) if select.delta > 0 else 1
        least = MIN_THRESHOLD_DELTA * max(shares, 1)
        violations.append(FieldViolation("delta", f"must be at least {least:g} for a grouped query whose group keys "
                                                  "are not public (the threshold that hides rare groups needs it)"))
    return violations


def _below(share: float, least: float) -> bool:
    # Plan shares are shaved by a relative 1e-9 (plan._SHAVE): a query asking exactly the least passes.
    return share < least * (1 - 1e-6)


def _calibration_violations(plan: Plan, *, integer: bool) -> list[FieldViolation]:
    """The backstop: calibrate every step as the run would; any failure is the query's."""
    try:
        for step in plan.steps:
            dryrun.step_error(plan, step, integer=integer)
    except Exception:  # noqa: BLE001 - OpenDP's exceptions, our internal_failure, float overflow: all the query's
        return [FieldViolation("epsilon", "the privacy parameters are too small for the mechanism to calibrate")]
    return []
