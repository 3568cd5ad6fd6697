"""A statistics query survives the SDK's conversion to a message and the server's conversion back."""

from __future__ import annotations

import datetime as dt

import pytest

from cleanroom.domain.errors import CleanroomError
from cleanroom.statistics.engine import Filter, Query
from cleanroom.v1 import stats_pb2
from cleanroom.wire.stats import query_from_proto, query_to_proto


@pytest.mark.parametrize("query", [
    Query(kind="count", epsilon=0.5),
    Query(kind="mean", column="x", bounds=(0.0, 40.0), epsilon=1.0, filters=(Filter("site", "in", ("a", "b")), Filter("y", ">=", 2.5))),
    Query(kind="variance", column="x", estimate_bounds=True, bounds_epsilon=0.2, epsilon=1.0, max_rows_per_patient=3),
    Query(kind="histogram", column="x", bins=(0.0, 10.0, 20.0), group_by="site", epsilon=1.0, delta=1e-6, noise="gaussian"),
    Query(kind="quantile", column="x", bounds=(0.0, 1.0), quantiles=(0.25, 0.75), epsilon=1.0,
          filters=(Filter("flag", "==", True), Filter("day", "<", "2024-03-01"))),
])
def test_a_query_round_trips_through_its_message(query: Query) -> None:
    assert query_from_proto(query_to_proto(query)) == query


def test_a_date_filter_travels_as_iso_text() -> None:
    message = query_to_proto(Query(kind="count", epsilon=1.0, filters=(Filter("day", "==", dt.date(2024, 3, 1)),)))
    assert message.filters[0].values[0].date == "2024-03-01"


def test_unset_enums_and_empty_filters_are_refused_by_field() -> None:
    message = stats_pb2.StatsQuery(epsilon=1.0, filters=[stats_pb2.Filter(column="x", op=stats_pb2.FILTER_OP_EQ)])
    with pytest.raises(CleanroomError) as caught:
        query_from_proto(message)
    assert {v.field for v in caught.value.violations} == {"query.kind", "query.filters[0].values"}
