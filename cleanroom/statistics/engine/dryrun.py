"""What a query will cost and how accurate it will be, computed without touching any data.

Everything here depends only on the query, the schema and public policy (the per-patient row
limit, public key lists), so a dry run can be shown to a caller before the budget is reserved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cleanroom.domain.deid import ColumnType
from cleanroom.statistics.engine import mechanisms
from cleanroom.statistics.engine.clamp_bounds import pass_threshold
from cleanroom.statistics.engine.compute import component_alpha
from cleanroom.statistics.engine.kinds import kind_spec
from cleanroom.statistics.engine.plan import DEFAULT_ROWS_PER_PATIENT, Plan, Step, make_plan
from cleanroom.statistics.engine.query import Query, check_privacy_amounts, column_types, may_need_delta, validate_query

PublicKeys = Mapping[str, Sequence[str]]
Schema = Sequence[tuple[str, "str | ColumnType"]]


def estimate_cost(
    query: Query,
    *,
    schema: Schema | None = None,
    public_group_keys: PublicKeys | None = None,
) -> tuple[float, float]:
    """(ε, δ) the query is charged. Without a schema, δ is charged whenever it might be needed."""
    if schema is None:
        check_privacy_amounts(query)
        return query.epsilon, (query.delta if may_need_delta(query) else 0.0)
    validate_query(query, schema, public_group_keys=public_group_keys)
    types = column_types(schema)
    plan = make_plan(query, types=types, public_group_keys=public_group_keys, default_rows_per_patient=DEFAULT_ROWS_PER_PATIENT)
    return plan.epsilon, plan.delta


def expected_error(
    query: Query,
    *,
    schema: Schema,
    public_group_keys: PublicKeys | None = None,
    default_rows_per_patient: int = DEFAULT_ROWS_PER_PATIENT,
) -> dict[str, float]:
    """95% half-widths of each noisy component, as run_query will state them, plus thresholds.

    Keys: "count", "sum", "sum_of_squares" (value units; "<name>.per_unit_bound" when bounds are
    to be estimated), "select.threshold" (the smallest count a non-public group needs to be
    released, roughly), "bounds.pass_threshold", and "quantile@<q>.rank_rows".
    """
    types = column_types(schema)
    validate_query(query, schema, public_group_keys=public_group_keys)
    plan = make_plan(query, types=types, public_group_keys=public_group_keys, default_rows_per_patient=default_rows_per_patient)
    integer = types.get(query.column or "") == "integer"
    out: dict[str, float] = {}
    for step in plan.steps:
        out.update(step_error(plan, step, integer=integer))
    return out


def step_error(plan: Plan, step: Step, *, integer: bool) -> dict[str, float]:
    """One step's expected error: the bounds and the τ-threshold here, the kind's own steps by its module."""
    alpha = component_alpha(plan.query.kind)
    if step.name == "bounds":
        noise = mechanisms.calibrate(sensitivity=plan.rows, epsilon=step.epsilon)
        return {"bounds.pass_threshold": pass_threshold(noise, integer=integer)}
    if step.name == "select":
        threshold = mechanisms.calibrate_threshold(rows=plan.rows, epsilon=step.epsilon, delta=step.delta, gaussian=plan.gaussian)
        return {"select.threshold": float(threshold.threshold), "count": threshold.noise.half_width(alpha=alpha)}
    return kind_spec(plan.query.kind).implementation().error(plan, step, integer=integer, alpha=alpha)
