"""Per-patient contribution bounding and filters, the steps before any mechanism runs."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.statistics.engine import Filter, Query, mechanisms, run_query
from cleanroom.statistics.engine.row_bounding import apply_filters, bound_rows
from tests.statistics.test_stats_fixtures import BANDS, vitals, with_patient

HUGE_EPSILON = 100.0  # at L = 1, discrete Laplace at scale 0.01: P(noise != 0) ≈ 2e^-100
PUBLIC = {"age_band": BANDS}


def _patient_rows(table: pa.Table) -> dict[str, int]:
    patients, counts = np.unique(np.asarray(table.column("patient").to_pylist()), return_counts=True)
    return dict(zip(patients.tolist(), counts.tolist()))


def test_bounding_keeps_at_most_l_rows_per_patient() -> None:
    table = with_patient(vitals(patients=300, rows_per_patient=2), patient="heavy", rows=5000)
    bounded = bound_rows(table, patient_column="patient", max_rows=3)
    rows = _patient_rows(bounded)
    assert rows["heavy"] == 3
    assert len(rows) == 301 and all(count == 2 for key, count in rows.items() if key != "heavy")


@settings(max_examples=60, deadline=None)
@given(patients=st.lists(st.integers(0, 12), min_size=0, max_size=200), limit=st.integers(1, 6))
def test_bounding_is_a_per_patient_subset(patients: list[int], limit: int) -> None:
    table = pa.table({"patient": pa.array(patients, pa.int64()), "row": pa.array(range(len(patients)))})
    kept = bound_rows(table, patient_column="patient", max_rows=limit)
    rows = kept.column("row").to_pylist()
    assert rows == sorted(set(rows))  # a subset, in table order, no duplicates
    for patient in set(patients):
        mine = [r for r in rows if patients[r] == patient]
        assert len(mine) == min(limit, patients.count(patient))


def test_rows_without_a_patient_key_are_dropped() -> None:
    table = pa.table({"patient": pa.array(["a", None, "b", None]), "x": pa.array([1, 2, 3, 4])})
    assert bound_rows(table, patient_column="patient", max_rows=10).column("x").to_pylist() == [1, 3]


def test_the_sample_is_uniform_and_keeps_table_order() -> None:
    table = pa.table({"patient": pa.array(["a"] * 10), "row": pa.array(range(10))})
    runs = 3000
    picks = np.zeros(10)
    for _ in range(runs):
        kept = bound_rows(table, patient_column="patient", max_rows=3).column("row").to_pylist()
        assert kept == sorted(kept) and len(set(kept)) == 3
        picks[kept] += 1
    # Each row is kept with probability 3/10; 5 standard errors (0.0084 each) either side.
    assert np.all(np.abs(picks / runs - 0.3) < 0.042)


def test_the_sample_is_fresh_on_every_call() -> None:
    table = vitals(patients=50, rows_per_patient=10)
    first = bound_rows(table, patient_column="patient", max_rows=2).column("heart_rate").to_pylist()
    second = bound_rows(table, patient_column="patient", max_rows=2).column("heart_rate").to_pylist()
    assert first != second  # 45^50 equally likely samples


@pytest.fixture
def no_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The un-noised internals: every additive release returns its input unchanged."""
    monkeypatch.setattr(mechanisms, "release", lambda values, noise: [int(v) for v in values])


@pytest.mark.usefixtures("no_noise")
@pytest.mark.parametrize("limit", [1, 3, 25])
def test_a_heavy_patient_moves_a_count_by_at_most_l(limit: int) -> None:
    base = vitals(patients=500)
    heavy = with_patient(base, patient="heavy", rows=5000)
    query = Query(kind="count", epsilon=1.0, max_rows_per_patient=limit)
    without = run_query(base, query, patient_column="patient").value
    with_heavy = run_query(heavy, query, patient_column="patient").value
    assert with_heavy - without == limit


@pytest.mark.usefixtures("no_noise")
def test_a_heavy_patient_moves_grouped_counts_by_at_most_l_in_total() -> None:
    base = vitals(patients=500)
    empty = base.slice(0, 0)
    heavy_rows = [with_patient(empty, patient="heavy", rows=1000, band=band) for band in BANDS]
    heavy = pa.concat_tables([base, *heavy_rows])  # one patient, 1000 rows in every band
    query = Query(kind="count", group_by="age_band", epsilon=1.0, max_rows_per_patient=4)
    without = run_query(base, query, patient_column="patient", public_group_keys=PUBLIC).by_key()
    with_heavy = run_query(heavy, query, patient_column="patient", public_group_keys=PUBLIC).by_key()
    assert sum(abs(with_heavy[k] - without[k]) for k in without) == 4


@pytest.mark.usefixtures("no_noise")
@pytest.mark.parametrize(("bounds", "limit"), [((0.0, 250.0), 2), ((-300.0, 100.0), 7)])
def test_a_heavy_patient_moves_a_sum_by_at_most_l_times_the_bound(bounds: tuple[float, float], limit: int) -> None:
    base = vitals(patients=500)
    heavy = with_patient(base, patient="heavy", rows=5000, heart_rate=10_000.0 if bounds[0] >= 0 else -10_000.0)
    query = Query(kind="sum", column="heart_rate", epsilon=1.0, bounds=bounds, max_rows_per_patient=limit)
    without = run_query(base, query, patient_column="patient").value
    with_heavy = run_query(heavy, query, patient_column="patient").value
    # The fixed-point resolution (2^-16 here) is the only slack.
    assert abs(with_heavy - without) == pytest.approx(limit * max(abs(b) for b in bounds), abs=1e-3)


def test_filters_apply_before_bounding() -> None:
    """One matching row among a patient's 100 must still be found with L = 1."""
    rows = 100
    table = pa.table(
        {
            "patient": pa.array(np.repeat([f"p{i}" for i in range(200)], rows)),
            "flag": pa.array(np.tile(np.arange(rows) == 37, 200)),
        }
    )
    query = Query(kind="count", epsilon=HUGE_EPSILON, filters=(Filter("flag", "==", True),))  # L = 1: scale 0.01
    assert run_query(table, query, patient_column="patient").value == 200


FILTER_TABLE = vitals(patients=2000)
SOME_STEPS = FILTER_TABLE.column("steps").to_pylist()[:3]
OPS = [
    (Filter("steps", "<", 5000), lambda t: t["steps"] < 5000),
    (Filter("steps", "<=", 5000.5), lambda t: t["steps"] <= 5000.5),
    (Filter("heart_rate", ">", 80), lambda t: t["heart_rate"] > 80),
    (Filter("heart_rate", ">=", 60.0), lambda t: t["heart_rate"] >= 60.0),
    (Filter("age_band", "==", "40-49"), lambda t: t["age_band"] == "40-49"),
    (Filter("age_band", "!=", "40-49"), lambda t: t["age_band"] != "40-49"),
    (Filter("age_band", "in", ["20-29", "60-69"]), lambda t: np.isin(t["age_band"], ["20-29", "60-69"])),
    (Filter("steps", "in", SOME_STEPS), lambda t: np.isin(t["steps"], SOME_STEPS)),
    (Filter("smoker", "==", True), lambda t: t["smoker"]),
    (Filter("visit", "<", "2024-07-01"), lambda t: t["visit"] < np.datetime64("2024-07-01")),
    (Filter("visit", ">=", dt.date(2024, 3, 1)), lambda t: t["visit"] >= np.datetime64("2024-03-01")),
]


@pytest.mark.parametrize(("flt", "truth"), OPS, ids=[f"{f.column}{f.op}" for f, _ in OPS])
def test_each_filter_operator(flt: Filter, truth: object) -> None:
    table = FILTER_TABLE
    columns = {name: table.column(name).to_numpy() for name in table.column_names}
    expected = int(np.sum(truth(columns)))  # type: ignore[operator]
    assert apply_filters(table, [flt]).num_rows == expected
    assert 0 < expected < table.num_rows


def test_nulls_never_match_a_filter() -> None:
    table = pa.table({"patient": pa.array(["a", "b", "c"]), "x": pa.array([1.0, None, 3.0])})
    assert apply_filters(table, [Filter("x", "!=", 1.0)]).column("patient").to_pylist() == ["c"]


@pytest.mark.usefixtures("no_noise")
def test_nan_and_null_values_are_dropped_before_any_arithmetic() -> None:
    values = [1.0, math.nan, None, 2.0, math.inf]
    table = pa.table({"patient": pa.array(["a", "b", "c", "d", "e"]), "x": pa.array(values, pa.float64())})
    total = run_query(table, Query(kind="sum", column="x", epsilon=1.0, bounds=(0.0, 10.0)), patient_column="patient")
    assert total.value == pytest.approx(13.0, abs=1e-4)  # 1 + 2 + inf clamped to 10
    count = run_query(table, Query(kind="count", column="x", epsilon=1.0), patient_column="patient")
    assert count.value == 3
    median = run_query(table, Query(kind="quantile", column="x", epsilon=1.0, bounds=(0.0, 10.0)), patient_column="patient")
    assert 0.0 <= median.value <= 10.0
