"""Privacy accounting: what each answer says it spent is what OpenDP certifies, and no more."""

from __future__ import annotations

import math

import numpy as np
import opendp.prelude as dp
import pytest

from cleanroom.statistics.engine import Filter, Query, estimate_cost, expected_error, mechanisms, run_query, schema_from_table
from cleanroom.statistics.engine.plan import make_plan
from cleanroom.statistics.engine.query import column_types
from tests.statistics.test_stats_fixtures import BANDS, vitals

TABLE = vitals(patients=600, rows_per_patient=3)
SCHEMA = schema_from_table(TABLE)
PUBLIC = {"age_band": BANDS}

QUERIES = [
    (Query(kind="count", epsilon=0.7, delta=1e-7), None),
    (Query(kind="count", group_by="age_band", epsilon=0.9, delta=1e-7, max_rows_per_patient=3), None),
    (Query(kind="sum", column="steps", epsilon=1.1, bounds=(0, 20_000), max_rows_per_patient=2), None),
    (Query(kind="mean", column="heart_rate", group_by="age_band", epsilon=1.3, bounds=(0, 250)), PUBLIC),
    (Query(kind="mean", column="heart_rate", group_by="age_band", epsilon=1.3, delta=1e-6, bounds=(0, 250)), None),
    (Query(kind="variance", column="heart_rate", epsilon=0.9, bounds=(20, 120), filters=(Filter("smoker", "==", False),)), None),
    (Query(kind="histogram", column="steps", epsilon=0.5, bins=(0, 5000, 10_000, 20_000), max_rows_per_patient=3), None),
    (Query(kind="quantile", column="steps", epsilon=1.0, bounds=(0, 20_000), quantiles=(0.25, 0.75), max_rows_per_patient=2), None),
    (Query(kind="mean", column="heart_rate", epsilon=1.0, estimate_bounds=True, bounds_epsilon=0.4), None),
    (Query(kind="sum", column="heart_rate", epsilon=1.0, delta=1e-6, noise="gaussian", bounds=(0, 250)), None),
]
IDS = [f"{q.kind}-{i}" for i, (q, _) in enumerate(QUERIES)]


def _spent(answer, step: str) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Rebuild a step's measurement from the Answer's record and ask OpenDP what it costs."""
    param = answer.mechanism.parameter
    scale, sensitivity = param(f"{step}.scale"), int(param(f"{step}.sensitivity"))
    if param(f"{step}.threshold") is not None:
        space = dp.map_domain(dp.atom_domain(T=dp.String), dp.atom_domain(T=dp.i64)), dp.l01inf_distance(dp.absolute_distance(T=dp.i64))
        certified = int(param(f"{step}.certified_threshold"))
        assert param(f"{step}.threshold") == certified + 1  # the opendp#2922 workaround is in force
        meas = dp.m.make_laplace_threshold(*space, scale=scale, threshold=certified)
        return meas.map((sensitivity,) * 3)
    if step.startswith("quantile@"):
        domain = dp.vector_domain(dp.atom_domain(T=dp.f64, nan=False))
        meas = dp.m.make_private_quantile(domain, dp.symmetric_distance(), dp.max_divergence(), candidates=[0.0, 1.0], alpha=float(step[9:]), scale=scale)
        return meas.map(sensitivity), 0.0
    space = dp.atom_domain(T=dp.i64), dp.absolute_distance(T=dp.i64)
    if "gaussian" in answer.mechanism.name:
        delta = param(f"{step}.delta")
        return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(dp.m.make_gaussian(*space, scale=scale)), delta=delta).map(sensitivity)
    return dp.m.make_laplace(*space, scale=scale).map(sensitivity), 0.0


@pytest.mark.parametrize(("query", "public"), QUERIES, ids=IDS)
def test_opendp_certifies_what_the_answer_charges(query: Query, public: dict | None) -> None:
    answer = run_query(TABLE, query, patient_column="patient", public_group_keys=public)
    steps = {name.rsplit(".", 1)[0] for name, _ in answer.mechanism.parameters if name.endswith(".scale")}
    spent = [_spent(answer, step) for step in sorted(steps)]
    assert sum(e for e, _ in spent) <= answer.epsilon <= query.epsilon
    assert sum(d for _, d in spent) <= answer.delta <= query.delta
    assert (answer.epsilon, answer.delta) == estimate_cost(query, schema=SCHEMA, public_group_keys=public)
    assert answer.mechanism.accountant == "basic"
    assert answer.mechanism.parameter("rows_per_patient") == answer.rows_per_patient


def test_sensitivity_scales_with_the_row_bound() -> None:
    one = run_query(TABLE, Query(kind="sum", column="steps", epsilon=1.0, bounds=(0, 20_000)), patient_column="patient")
    three = run_query(TABLE, Query(kind="sum", column="steps", epsilon=1.0, bounds=(-20_000, 100), max_rows_per_patient=3), patient_column="patient")
    resolution = one.mechanism.parameter("sum.resolution")
    assert one.mechanism.parameter("sum.sensitivity") * resolution == pytest.approx(20_000, rel=1e-6)
    assert three.mechanism.parameter("sum.sensitivity") * resolution == pytest.approx(3 * 20_000, rel=1e-6)
    assert three.mechanism.parameter("sum.scale") == pytest.approx(3 * one.mechanism.parameter("sum.scale"), rel=1e-6)


def test_pure_queries_charge_no_delta_even_when_one_is_named() -> None:
    query = Query(kind="count", group_by="age_band", epsilon=1.0, delta=1e-6)
    assert estimate_cost(query, schema=SCHEMA, public_group_keys=PUBLIC) == (1.0, 0.0)
    assert estimate_cost(query, schema=SCHEMA) == (1.0, 1e-6)
    assert estimate_cost(query) == (1.0, 1e-6)  # without a schema: conservative
    assert estimate_cost(Query(kind="count", epsilon=1.0, delta=1e-6)) == (1.0, 0.0)


def test_steps_never_sum_above_the_query() -> None:
    types = column_types(SCHEMA)
    for query, public in QUERIES:
        plan = make_plan(query, types=types, public_group_keys=public, default_rows_per_patient=1)
        assert math.fsum(s.epsilon for s in plan.steps) <= query.epsilon
        assert math.fsum(s.delta for s in plan.steps) <= plan.delta <= query.delta


def test_dry_run_errors_match_the_answers() -> None:
    count = Query(kind="count", epsilon=0.5, max_rows_per_patient=2)
    total = Query(kind="sum", column="heart_rate", epsilon=0.5, bounds=(0, 250))
    grouped = Query(kind="count", group_by="age_band", epsilon=0.5, delta=1e-8)
    assert expected_error(count, schema=SCHEMA)["count"] == run_query(TABLE, count, patient_column="patient").half_width
    assert expected_error(total, schema=SCHEMA)["sum"] == pytest.approx(run_query(TABLE, total, patient_column="patient").half_width)
    dry = expected_error(grouped, schema=SCHEMA)
    answer = run_query(TABLE, grouped, patient_column="patient")
    assert dry["select.threshold"] == answer.mechanism.parameter("select.threshold")
    assert all(cell.half_width == dry["count"] for cell in answer.cells)
    quantile = expected_error(Query(kind="quantile", column="heart_rate", epsilon=1.0, bounds=(0, 250)), schema=SCHEMA)
    assert quantile["quantile@0.5.rank_rows"] == pytest.approx(math.log(1024 / 0.05), rel=1e-6)


def test_quantile_privacy_is_linear_in_rows() -> None:
    """Cells compose in parallel only because the quantile's map is linear in the rows changed."""
    domain = dp.vector_domain(dp.atom_domain(T=dp.f64, nan=False))
    for level in (0.1, 0.5, 0.93):
        meas = dp.m.make_private_quantile(domain, dp.symmetric_distance(), dp.max_divergence(), candidates=[0.0, 1.0], alpha=level, scale=3.0)
        assert all(meas.map(rows) == pytest.approx(rows * meas.map(1)) for rows in (2, 5, 17))


def test_fixed_point_is_exact_and_bounded() -> None:
    for magnitude in (1e-6, 0.5, 1.0, 250.0, 20_000.0, 2.0**60):
        bits = mechanisms.fixed_point_bits(magnitude)
        top = mechanisms.fixed_magnitude(magnitude, bits)
        assert 2**23 <= top <= 2**24
        values = np.array([-magnitude, magnitude, magnitude / 3])
        fixed = mechanisms.to_fixed(values, bits)
        assert np.all(np.abs(fixed) <= top)
        assert np.all(np.abs(np.ldexp(fixed.astype(float), -bits) - values) <= 2.0 ** (-bits - 1))


def test_only_the_contrib_feature_is_enabled() -> None:
    assert "contrib" in dp.GLOBAL_FEATURES
    assert "floating-point" not in dp.GLOBAL_FEATURES


@pytest.mark.parametrize(
    ("query", "name"),
    [
        (Query(kind="count", epsilon=1.0), "discrete-laplace"),
        (Query(kind="count", epsilon=1.0, delta=1e-6, noise="gaussian"), "discrete-gaussian"),
        (Query(kind="count", group_by="age_band", epsilon=1.0, delta=1e-6), "discrete-laplace-threshold"),
        (Query(kind="quantile", column="steps", epsilon=1.0, bounds=(0, 20_000)), "private-quantile"),
        (Query(kind="sum", column="steps", epsilon=1.0, group_by="age_band", delta=1e-6, bounds=(0, 20_000)), "discrete-laplace-threshold+discrete-laplace"),
    ],
)
def test_mechanism_names(query: Query, name: str) -> None:
    assert run_query(TABLE, query, patient_column="patient").mechanism.name == name
