"""Query validation: one FieldViolation per bad input, naming the field and never a value."""

from __future__ import annotations

import math

import pytest

from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.statistics.engine import Filter, Query, run_query, schema_from_table, validate_query
from tests.statistics.test_stats_fixtures import CANARY, vitals, with_patient

TABLE = with_patient(vitals(patients=1000), patient="p-canary", rows=3, band=CANARY)
SCHEMA = schema_from_table(TABLE)
PUBLIC = {"age_band": ["20-29", "30-39", "40-49", "50-59", "60-69"]}


def _violations(query: Query, **kwargs: object) -> dict[str, str]:
    with pytest.raises(CleanroomError) as caught:
        validate_query(query, SCHEMA, patient_column="patient", **kwargs)
    error = caught.value
    assert error.code is ErrorCode.BAD_REQUEST
    text = error.message + "".join(v.field + v.description for v in error.violations) + str(error)
    assert CANARY not in text
    return {v.field: v.description for v in error.violations}


BAD = [
    ("unknown column", Query(kind="sum", column="salary", epsilon=1.0, bounds=(0, 1)), "column"),
    ("unknown group_by", Query(kind="count", group_by="ward", epsilon=1.0, delta=1e-6), "group_by"),
    ("unknown filter column", Query(kind="count", epsilon=1.0, filters=(Filter("ward", "==", "x"),)), "filters[0].column"),
    ("patient column", Query(kind="count", group_by="patient", epsilon=1.0, delta=1e-6), "group_by"),
    ("mean over a string", Query(kind="mean", column="age_band", epsilon=1.0, bounds=(0, 1)), "column"),
    ("variance over a boolean", Query(kind="variance", column="smoker", epsilon=1.0, bounds=(0, 1)), "column"),
    ("quantile over a date", Query(kind="quantile", column="visit", epsilon=1.0, bounds=(0, 1)), "column"),
    ("sum without a column", Query(kind="sum", epsilon=1.0, bounds=(0, 1)), "column"),
    ("missing bounds", Query(kind="sum", column="heart_rate", epsilon=1.0), "bounds"),
    ("inverted bounds", Query(kind="mean", column="heart_rate", epsilon=1.0, bounds=(200, 0)), "bounds"),
    ("equal bounds", Query(kind="mean", column="heart_rate", epsilon=1.0, bounds=(5, 5)), "bounds"),
    ("infinite bound", Query(kind="mean", column="heart_rate", epsilon=1.0, bounds=(0, math.inf)), "bounds"),
    ("bounds and estimation", Query(kind="mean", column="heart_rate", epsilon=1.0, bounds=(0, 1), estimate_bounds=True), "bounds"),
    ("bounds epsilon too big", Query(kind="mean", column="heart_rate", epsilon=1.0, estimate_bounds=True, bounds_epsilon=1.0), "bounds_epsilon"),
    ("epsilon zero", Query(kind="count", epsilon=0.0), "epsilon"),
    ("epsilon negative", Query(kind="count", epsilon=-1.0), "epsilon"),
    ("epsilon nan", Query(kind="count", epsilon=math.nan), "epsilon"),
    ("epsilon infinite", Query(kind="count", epsilon=math.inf), "epsilon"),
    ("delta one", Query(kind="count", epsilon=1.0, delta=1.0), "delta"),
    ("delta negative", Query(kind="count", epsilon=1.0, delta=-1e-9), "delta"),
    ("delta missing for unknown keys", Query(kind="count", group_by="age_band", epsilon=1.0), "delta"),
    ("delta missing for gaussian", Query(kind="count", epsilon=1.0, noise="gaussian"), "delta"),
    ("unknown noise", Query(kind="count", epsilon=1.0, noise="uniform"), "noise"),
    ("group by a number", Query(kind="count", group_by="steps", epsilon=1.0, delta=1e-6), "group_by"),
    ("group by a boolean", Query(kind="count", group_by="smoker", epsilon=1.0, delta=1e-6), "group_by"),
    ("number filter with text", Query(kind="count", epsilon=1.0, filters=(Filter("steps", ">", CANARY),)), "filters[0].value"),
    ("range filter on text", Query(kind="count", epsilon=1.0, filters=(Filter("age_band", "<", CANARY),)), "filters[0].op"),
    ("unknown operator", Query(kind="count", epsilon=1.0, filters=(Filter("steps", "~", 1),)), "filters[0].op"),
    ("empty in list", Query(kind="count", epsilon=1.0, filters=(Filter("age_band", "in", []),)), "filters[0].value"),
    ("in with a bare string", Query(kind="count", epsilon=1.0, filters=(Filter("age_band", "in", CANARY),)), "filters[0].value"),
    ("bad date", Query(kind="count", epsilon=1.0, filters=(Filter("visit", ">=", "2024-13-45"),)), "filters[0].value"),
    ("boolean filter with text", Query(kind="count", epsilon=1.0, filters=(Filter("smoker", "==", "yes"),)), "filters[0].value"),
    ("histogram without bins", Query(kind="histogram", column="heart_rate", epsilon=1.0), "bins"),
    ("decreasing bins", Query(kind="histogram", column="heart_rate", epsilon=1.0, bins=(10, 5, 20)), "bins"),
    ("bins on a string", Query(kind="histogram", column="age_band", epsilon=1.0, delta=1e-6, bins=(0, 1)), "bins"),
    ("quantile level 1", Query(kind="quantile", column="heart_rate", epsilon=1.0, bounds=(0, 1), quantiles=(1.0,)), "quantiles"),
    ("duplicate levels", Query(kind="quantile", column="heart_rate", epsilon=1.0, bounds=(0, 1), quantiles=(0.5, 0.5)), "quantiles"),
    ("rows per patient zero", Query(kind="count", epsilon=1.0, max_rows_per_patient=0), "max_rows_per_patient"),
    ("unknown kind", Query(kind="median", column="heart_rate", epsilon=1.0), "kind"),
]


@pytest.mark.parametrize(("label", "query", "field"), BAD, ids=[b[0] for b in BAD])
def test_each_bad_input_names_its_field(label: str, query: Query, field: str) -> None:
    assert field in _violations(query, public_group_keys=None)


def test_several_problems_are_reported_together() -> None:
    query = Query(kind="mean", column="age_band", group_by="steps", epsilon=-1.0, bounds=(3, 1))
    assert {"column", "group_by", "epsilon", "bounds"} <= set(_violations(query))


def test_public_keys_need_no_delta() -> None:
    validate_query(Query(kind="count", group_by="age_band", epsilon=1.0), SCHEMA, public_group_keys=PUBLIC)


def test_quantiles_are_pure_whatever_the_noise() -> None:
    query = Query(kind="quantile", column="heart_rate", epsilon=1.0, bounds=(0, 250), noise="gaussian")
    validate_query(query, SCHEMA)


def test_valid_queries_pass() -> None:
    for query in [
        Query(kind="count", epsilon=1.0),
        Query(kind="sum", column="steps", epsilon=0.5, bounds=(0, 20_000), filters=(Filter("visit", ">=", "2024-03-01"),)),
        Query(kind="mean", column="heart_rate", epsilon=1.0, estimate_bounds=True),
        Query(kind="histogram", column="smoker", epsilon=1.0),
        Query(kind="quantile", column="heart_rate", epsilon=1.0, bounds=(0, 250), quantiles=(0.1, 0.5, 0.9)),
        Query(kind="count", epsilon=1.0, filters=(Filter("age_band", "in", ["40-49", "50-59"]), Filter("smoker", "==", True))),
    ]:
        validate_query(query, SCHEMA, patient_column="patient")


def test_run_query_refuses_before_touching_rows() -> None:
    with pytest.raises(CleanroomError) as caught:
        run_query(TABLE, Query(kind="sum", column="age_band", epsilon=1.0, bounds=(0, 1)), patient_column="patient")
    assert caught.value.code is ErrorCode.BAD_REQUEST
    assert CANARY not in repr(caught.value.violations) + caught.value.message


def test_missing_patient_column_fails_closed() -> None:
    with pytest.raises(CleanroomError) as caught:
        run_query(TABLE, Query(kind="count", epsilon=1.0), patient_column="mrn")
    assert caught.value.code is ErrorCode.FAILED_PRECONDITION


def test_the_canary_never_appears_in_answers() -> None:
    """A one-patient group named by the canary: τ-thresholding or the public key list drops it."""
    queries = [
        (Query(kind="count", group_by="age_band", epsilon=1.0, delta=1e-6), None),
        (Query(kind="histogram", column="age_band", epsilon=1.0, delta=1e-6), None),
        (Query(kind="mean", column="heart_rate", group_by="age_band", epsilon=1.0, delta=1e-6, bounds=(0, 250)), None),
        (Query(kind="count", group_by="age_band", epsilon=1.0), PUBLIC),
        (Query(kind="quantile", column="heart_rate", group_by="age_band", epsilon=1.0, bounds=(0, 250)), PUBLIC),
    ]
    for query, public in queries:
        for _ in range(20):
            answer = run_query(TABLE, query, patient_column="patient", public_group_keys=public)
            assert len(answer.cells) >= 5
            assert CANARY not in repr(answer)
