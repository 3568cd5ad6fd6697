"""The policy editor's preview: how many requests the remaining budget allows at a chosen ε, and
the expected error of a query at that ε.

Counts use the ledger's own arithmetic (whole micro-ε, costs rounded up, basic composition: each
request is charged its ε in full). Errors come from the statistics engine's dry run
(`expected_error`), the same figures a manufacturer's estimate shows, for a count and for a mean
with public bounds, with the engine's default mechanism (Laplace noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cleanroom.console.pages.budget_views import BudgetLine
from cleanroom.domain.errors import CleanroomError
from cleanroom.statistics.engine import Query, expected_error

MICRO = 1_000_000
ATTO = 10**18
# The dry run needs only a column's type, never data: one numeric column stands for any.
PREVIEW_SCHEMA = (("value", "float"),)


@dataclass(frozen=True)
class Allowance:
    budget: BudgetLine
    remaining_epsilon: float  # for a share: the least of the share and the dataset-wide budget
    jobs: int
    queries: int
    jobs_limited_by_delta: bool  # δ, not ε, runs out first for jobs


@dataclass(frozen=True)
class QueryError:
    kind: str
    components: list[tuple[str, float]]  # (component, 95% half-width)


@dataclass(frozen=True)
class Preview:
    job_epsilon: float
    job_delta: float
    query_epsilon: float
    bounds: tuple[float, float]
    rows_per_patient: int
    allowances: list[Allowance]
    errors: list[QueryError]
    problem: str  # why the errors could not be computed (bad input), else ""


def how_many(remaining_epsilon: float, remaining_delta: float, epsilon: float, delta: float) -> int:
    """Requests of (ε, δ) that fit: the ledger charges whole micro-ε (rounded up) and atto-δ."""
    if epsilon <= 0 or not math.isfinite(epsilon):
        return 0
    by_epsilon = round(remaining_epsilon * MICRO) // math.ceil(epsilon * MICRO)
    if delta <= 0:
        return max(0, by_epsilon)
    by_delta = round(remaining_delta * ATTO) // math.ceil(delta * ATTO)
    return max(0, min(by_epsilon, by_delta))


def allowances(budgets: list[BudgetLine], job: tuple[float, float], query_epsilon: float) -> list[Allowance]:
    whole = next((b for b in budgets if not b.is_share), None)
    out = []
    for budget in budgets:
        eps_left, delta_left = budget.remaining_epsilon, budget.remaining_delta
        if budget.is_share and whole is not None:  # a share also draws on the dataset-wide budget
            eps_left, delta_left = min(eps_left, whole.remaining_epsilon), min(delta_left, whole.remaining_delta)
        jobs = how_many(eps_left, delta_left, *job)
        out.append(Allowance(budget, eps_left, jobs, how_many(eps_left, delta_left, query_epsilon, 0.0),
                             jobs < how_many(eps_left, 0.0, job[0], 0.0)))
    return out


def query_errors(epsilon: float, bounds: tuple[float, float], rows_per_patient: int) -> tuple[list[QueryError], str]:
    queries = {
        "count": Query(kind="count", epsilon=epsilon),
        f"mean of a value within [{bounds[0]:g}, {bounds[1]:g}]": Query(kind="mean", column="value", bounds=bounds, epsilon=epsilon),
    }
    try:
        return [QueryError(kind, sorted(expected_error(q, schema=PREVIEW_SCHEMA, default_rows_per_patient=rows_per_patient).items()))
                for kind, q in queries.items()], ""
    except CleanroomError as error:
        return [], " ".join([error.message, *(f"({v.field}: {v.description})" for v in error.violations)])


def preview(budgets: list[BudgetLine], *, job_epsilon: float, job_delta: float, query_epsilon: float,
            bounds: tuple[float, float], rows_per_patient: int) -> Preview:
    errors, problem = query_errors(query_epsilon, bounds, rows_per_patient)
    return Preview(job_epsilon, job_delta, query_epsilon, bounds, rows_per_patient,
                   allowances(budgets, (job_epsilon, job_delta), query_epsilon), errors, problem)
