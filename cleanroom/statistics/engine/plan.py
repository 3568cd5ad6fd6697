"""How a query's (ε, δ) is split across the mechanisms it runs (pure: no data, no noise).

Basic composition: the steps' ε add up to at most the query's ε, their δ to at most its δ. Each
share is shaved by a relative 1e-9 so that float rounding in the split can never make the parts
sum to more than the whole that the ledger charges.

Steps, in the order they run:
  bounds          DP clamping bounds (only with estimate_bounds; its own ε share)
  select          τ-thresholded counts, when group keys are not public; doubles as the count
  then the kind's own steps (its KindSpec in cleanroom.statistics.engine.kinds), e.g.
  count           noisy row counts (count, histogram, the denominator of mean and variance)
  sum             noisy clamped sum (sum, mean, variance)
  sum_of_squares  noisy clamped sum of squared centred values (variance)
  quantile@q      one private-quantile selection per requested level
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cleanroom.statistics.engine.kinds import kind_spec
from cleanroom.statistics.engine.query import Query, keyspace_is_public

_SHAVE = 1 - 1e-9
DEFAULT_ROWS_PER_PATIENT = 1  # when neither the query nor the dataset policy says otherwise


@dataclass(frozen=True)
class Step:
    name: str
    epsilon: float
    delta: float = 0.0
    level: float | None = None  # quantile steps only


@dataclass(frozen=True)
class Plan:
    query: Query
    rows: int               # L: the most rows one patient contributes
    public_keys: bool       # every possible group key is public: no threshold
    steps: tuple[Step, ...]
    epsilon: float          # what the ledger charges
    delta: float

    @property
    def gaussian(self) -> bool:
        return self.query.noise == "gaussian"

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    def required_step(self, name: str) -> Step:
        """A step the query's kind always plans (a missing one is the engine's bug, not the query's)."""
        step = self.step(name)
        if step is None:
            raise LookupError(f"the plan has no {name} step")
        return step


def make_plan(
    query: Query,
    *,
    types: Mapping[str, str],
    public_group_keys: Mapping[str, Sequence[str]] | None,
    default_rows_per_patient: int,
) -> Plan:
    """The steps of a (validated) query with their ε and δ shares."""
    public = keyspace_is_public(query, types, public_group_keys)
    names = _step_names(query, public)
    additive = kind_spec(query.kind).additive and query.noise == "gaussian"
    uses_delta = [n == "select" or additive for n in names]
    stat_epsilon = (query.epsilon - query.bounds_share) / len(names) * _SHAVE
    delta_share = query.delta / sum(uses_delta) * _SHAVE if any(uses_delta) else 0.0
    steps = [_step(name, stat_epsilon, delta_share if d else 0.0) for name, d in zip(names, uses_delta)]
    if query.estimate_bounds:
        steps.insert(0, Step("bounds", query.bounds_share * _SHAVE))
    rows = query.max_rows_per_patient or default_rows_per_patient
    charged_delta = query.delta if any(uses_delta) else 0.0
    return Plan(query, rows, public, tuple(steps), query.epsilon, charged_delta)


def _step_names(query: Query, public: bool) -> list[str]:
    spec = kind_spec(query.kind)
    if spec.per_level:
        names = [f"{step}@{level!r}" for level in query.quantiles for step in spec.steps]
    else:
        names = list(spec.steps)
    if public:
        return names
    # A τ-threshold release is itself a noisy count per surviving key, so it replaces "count".
    return ["select"] + [n for n in names if n != "count"]


def _step(name: str, epsilon: float, delta: float) -> Step:
    level = float(name.split("@", 1)[1]) if "@" in name else None
    return Step(name, epsilon, delta, level)
