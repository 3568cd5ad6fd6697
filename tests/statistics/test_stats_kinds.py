"""The statistic kinds registry: each kind is one entry, and every other layer follows from it."""

from __future__ import annotations

import inspect

import pytest

from cleanroom.statistics.engine import Query, expected_error
from cleanroom.statistics.engine.compute import ALPHA, component_alpha
from cleanroom.statistics.engine.kinds import KIND_NAMES, SPECS, KindModule, StatKind, find_kind, kind_spec
from cleanroom.statistics.engine.plan import make_plan
from cleanroom.statistics.engine.query import KINDS
from cleanroom.v1 import stats_pb2
from cleanroom.wire.stats import KIND_ENUMS
from cleanroom.wire.stats import KINDS as WIRE_KINDS

SCHEMA = [("patient", "string"), ("x", "float"), ("band", "string")]


def test_every_kind_has_one_spec_under_its_own_name() -> None:
    assert list(SPECS) == list(StatKind)
    assert all(kind is spec.kind for kind, spec in SPECS.items())
    assert KINDS == KIND_NAMES == ("count", "sum", "mean", "variance", "histogram", "quantile")


def test_every_kind_has_a_proto_value_and_every_proto_value_a_kind() -> None:
    named = {value for name, value in stats_pb2.StatisticKind.items() if name != "STATISTIC_KIND_UNSPECIFIED"}
    assert set(WIRE_KINDS) == named
    for kind, spec in SPECS.items():
        assert stats_pb2.StatisticKind.Name(KIND_ENUMS[kind]) == spec.proto == f"STATISTIC_KIND_{kind.name}"


@pytest.mark.parametrize("kind", list(StatKind))
def test_every_kind_module_computes_and_states_its_error(kind: StatKind) -> None:
    module = kind_spec(kind).implementation()
    for name in ("compute", "error"):
        expected = inspect.signature(getattr(KindModule, name))
        actual = inspect.signature(getattr(module, name))
        assert list(actual.parameters) == [p for p in expected.parameters if p != "self"], (kind, name)


def test_a_kind_is_looked_up_by_its_name_and_anything_else_is_no_kind() -> None:
    assert find_kind("mean") is SPECS[StatKind.MEAN] is kind_spec(StatKind.MEAN)
    for other in ("median", "MEAN", "", None, 3, ["mean"]):
        assert find_kind(other) is None  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        kind_spec("median")


@pytest.mark.parametrize(("query", "public", "steps"), [
    (Query(kind="count", epsilon=1.0), True, ["count"]),
    (Query(kind="sum", column="x", bounds=(0, 1), epsilon=1.0), True, ["sum"]),
    (Query(kind="mean", column="x", bounds=(0, 1), epsilon=1.0, group_by="band", delta=1e-6), False, ["select", "sum"]),
    (Query(kind="variance", column="x", estimate_bounds=True, epsilon=1.0), True, ["bounds", "count", "sum", "sum_of_squares"]),
    (Query(kind="histogram", column="x", bins=(0, 1, 2), epsilon=1.0), True, ["count"]),
    (Query(kind="quantile", column="x", bounds=(0, 1), quantiles=(0.25, 0.5), epsilon=1.0), True, ["quantile@0.25", "quantile@0.5"]),
])
def test_the_plan_runs_the_kinds_steps(query: Query, public: bool, steps: list[str]) -> None:
    plan = make_plan(query, types=dict(SCHEMA), public_group_keys=None, default_rows_per_patient=1)
    assert plan.public_keys is public
    assert [s.name for s in plan.steps] == steps
    levelled = [s.level for s in plan.steps if s.level is not None]
    assert levelled == (list(query.quantiles) if query.kind == "quantile" else [])


def test_each_component_of_a_ratio_gets_its_share_of_alpha() -> None:
    assert component_alpha("count") == ALPHA
    assert component_alpha("mean") == ALPHA / 2
    assert component_alpha("variance") == ALPHA / 3


def test_the_dry_run_asks_the_kinds_module_for_its_steps_errors() -> None:
    variance = expected_error(Query(kind="variance", column="x", bounds=(0, 10), epsilon=1.0), schema=SCHEMA)
    assert set(variance) == {"count", "sum", "sum_of_squares"}
    grouped = expected_error(Query(kind="quantile", column="x", bounds=(0, 10), epsilon=1.0, group_by="band", delta=1e-6), schema=SCHEMA)
    assert set(grouped) == {"select.threshold", "count", "quantile@0.5.rank_rows"}
