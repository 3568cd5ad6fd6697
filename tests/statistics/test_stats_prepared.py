"""The warm worker's prepared table: the shortcuts it takes must select exactly the reference rows."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from cleanroom.statistics.engine import Filter, Query, compute, run_query
from cleanroom.statistics.engine.plan import make_plan
from cleanroom.statistics.engine.prepared import PreparedTable, code_dtype, count_codes

HUGE_EPSILON = 100.0  # at L = 1, discrete Laplace at scale 0.01: P(noise != 0) ≈ 2e^-100


def _table(sites: list[str | None], values: list[float | None]) -> pa.Table:
    patients = [f"p{i}" for i in range(len(sites))]  # one row each: the bound keeps every row
    return pa.table({"patient": patients, "site": pa.array(sites, pa.string()), "value": pa.array(values, pa.float64())})


def _selection(table: pa.Table, query: Query):
    prepared = PreparedTable(table, patient_column="patient")
    types = dict(prepared.types)
    plan = make_plan(query, types=types, public_group_keys=None, default_rows_per_patient=1)
    return prepared.select(plan, None)


@pytest.mark.parametrize("sites", [
    ["west", "east", "north", "east", "west", "central"],          # first appearance is not sorted order
    ["west", None, "east", "north", None, "east", "west"],          # nulls leave the grouping
])
def test_grouped_cells_come_in_sorted_order_with_their_counts(sites) -> None:
    selection = _selection(_table(sites, [1.0] * len(sites)), Query(kind="count", group_by="site", epsilon=1.0, delta=1e-6))
    expected = Counter(s for s in sites if s is not None)
    assert selection.keys == sorted(expected)
    assert selection.counts.tolist() == [expected[k] for k in selection.keys]
    grouped = [selection.keys[c] for c in selection.codes]
    assert sorted(grouped) == sorted(s for s in sites if s is not None)
    kept_sites = {sites[int(r)] for r in selection.rows}
    assert None not in kept_sites


def test_rows_and_codes_agree_under_a_filter_and_missing_values() -> None:
    sites = ["b", "a", "c", "a", None, "b", "c", "a"]
    values = [1.0, None, 3.0, float("nan"), 5.0, 6.0, 7.0, 8.0]
    query = Query(kind="mean", column="value", bounds=(0.0, 10.0), group_by="site", epsilon=1.0, delta=1e-6,
                  filters=(Filter("site", "!=", "c"),))
    selection = _selection(_table(sites, values), query)
    prepared = PreparedTable(_table(sites, values), patient_column="patient")
    kept = sorted(prepared.column("value").values[selection.rows].tolist())
    assert kept == [1.0, 6.0, 8.0]  # no null, no NaN, no "c", no row without a site
    assert selection.keys == ["a", "b"] and selection.counts.tolist() == [1, 2]


def test_exact_grouped_counts_match_the_rows() -> None:
    rng = np.random.default_rng(5)
    sites = rng.choice(["north", "east", "west"], size=3000).tolist()
    answer = run_query(_table(sites, [1.0] * 3000), Query(kind="count", group_by="site", epsilon=HUGE_EPSILON, delta=1e-6,
                                                          max_rows_per_patient=1), patient_column="patient")
    truth = Counter(sites)
    assert [c.key for c in answer.cells] == [("east",), ("north",), ("west",)]
    assert [c.value for c in answer.cells] == [truth["east"], truth["north"], truth["west"]]


def test_an_integer_column_with_declared_categories_groups_exactly_and_drops_missing_values() -> None:
    rng = np.random.default_rng(9)
    codes = rng.choice([0, 1, 2], size=3000).tolist()
    codes[:7] = [None] * 7
    table = pa.table({"patient": [f"p{i}" for i in range(3000)], "sex": pa.array(codes, pa.int64()), "value": [1.0] * 3000})
    filters = (Filter("sex", "!=", 2),)  # still filtered as a number
    answer = run_query(table, Query(kind="count", group_by="sex", epsilon=HUGE_EPSILON, filters=filters, max_rows_per_patient=1),
                       patient_column="patient", public_group_keys={"sex": ["0", "1", "2", "3"]})
    truth = Counter(c for c in codes if c is not None)
    assert [c.key for c in answer.cells] == [("0",), ("1",), ("2",), ("3",)]
    assert [c.value for c in answer.cells] == [truth[0], truth[1], 0, 0]


@pytest.mark.parametrize("cells", [1, 4])
def test_fixed_point_totals_are_exact(cells) -> None:
    rng = np.random.default_rng(cells)
    values = rng.uniform(-250, 250, size=200_000)
    bits = 24 - 8  # |x| ≤ 256
    codes = rng.integers(0, cells, size=values.size)
    holder = compute.Cells(plan=None, keys=[("k",)] * cells, codes=codes)  # type: ignore[arg-type]
    totals = compute._cell_totals(holder, values, bits)
    fixed = np.rint(np.ldexp(values, bits)).astype(np.int64)
    expected = [int(fixed[codes == c].sum()) for c in range(cells)]
    assert totals.dtype == np.int64 and totals.tolist() == expected


def test_the_bounded_rows_reused_across_queries_match_a_fresh_selection() -> None:
    rng = np.random.default_rng(11)
    patients = rng.integers(0, 300, size=4000).astype(str).tolist()  # ~13 rows each: the bound drops rows
    sites = rng.choice(["north", "east", "west"], size=4000).tolist()
    prepared = PreparedTable(pa.table({"patient": patients, "site": sites}), patient_column="patient")
    query = Query(kind="count", group_by="site", epsilon=1.0, delta=1e-6, max_rows_per_patient=3)
    plan = make_plan(query, types=dict(prepared.types), public_group_keys=None, default_rows_per_patient=1)
    first, again = prepared.select(plan, None), prepared.select(plan, None)  # the second from the kept rows and codes
    everything = Query(kind="count", group_by="site", epsilon=1.0, delta=1e-6, max_rows_per_patient=3,
                       filters=(Filter("site", "!=", "south"),))  # keeps every row, through the masked path
    masked = prepared.select(make_plan(everything, types=dict(prepared.types), public_group_keys=None, default_rows_per_patient=1), None)
    assert first.counts.sum() == sum(min(3, n) for n in Counter(patients).values())
    for other in (again, masked):
        assert other.keys == first.keys and other.counts.tolist() == first.counts.tolist()
        assert np.array_equal(other.rows, first.rows) and np.array_equal(other.codes, first.codes)


def test_a_clamp_never_changes_the_values_later_queries_share() -> None:
    rng = np.random.default_rng(3)
    patients = rng.integers(0, 500, size=5000).astype(str).tolist()
    values = rng.uniform(0, 100, size=5000)
    prepared = PreparedTable(pa.table({"patient": patients, "value": values}), patient_column="patient")

    def total(bounds: tuple[float, float]) -> float:
        query = Query(kind="sum", column="value", bounds=bounds, epsilon=HUGE_EPSILON, max_rows_per_patient=2)
        return run_query(prepared, query, patient_column="patient").cells[0].value

    wide = total((0.0, 100.0))
    assert total((0.0, 10.0)) < wide / 3  # clamped hard...
    assert total((0.0, 100.0)) == pytest.approx(wide, abs=1e-3 * wide)  # ...and the shared values are untouched


@pytest.mark.parametrize("labels", [1, 5, 32, 127, 128, 300, 40_000])
def test_counting_codes_agrees_with_bincount_whatever_their_width(labels: int) -> None:
    rng = np.random.default_rng(labels)
    codes = rng.integers(0, labels, 10_000).astype(code_dtype(labels))
    assert codes.dtype.itemsize == (1 if labels <= 127 else 2 if labels <= 32_767 else 4)
    assert count_codes(codes, labels).tolist() == np.bincount(codes.astype(np.int64), minlength=labels).tolist()


def test_many_labels_keep_distinct_codes() -> None:
    """A column with more labels than int8 holds gets wider codes, never wrapped ones."""
    sites = [f"s{i:03d}" for i in range(200)] * 2
    selection = _selection(_table(sites, [1.0] * len(sites)), Query(kind="count", group_by="site", epsilon=1.0, delta=1e-6))
    assert selection.keys == sorted(set(sites))
    assert selection.counts.tolist() == [2] * 200
