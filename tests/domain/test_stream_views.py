"""Stream views as the service checks them before any budget moves (pure)."""

from __future__ import annotations

import pytest

from cleanroom.domain.deid import ColumnRole, ColumnSpec, ColumnType
from cleanroom.domain.stream_views import StreamView, group_columns, parse_view, validate_view, view_columns
from cleanroom.domain.streams import StreamDescription

STREAM = StreamDescription("time", (("heart_rate", "bpm"), ("spo2", "%")), 1, 48)
COLUMNS = (
    ColumnSpec("name", ColumnType.STRING, ColumnRole.DIRECT_IDENTIFIER),
    ColumnSpec("patient", ColumnType.STRING, ColumnRole.PATIENT_KEY),
    ColumnSpec("time", ColumnType.TIMESTAMP, ColumnRole.TIME),
    ColumnSpec("heart_rate", ColumnType.FLOAT, ColumnRole.FEATURE),
    ColumnSpec("spo2", ColumnType.FLOAT, ColumnRole.FEATURE),
    ColumnSpec("arm", ColumnType.STRING, ColumnRole.FEATURE),
    ColumnSpec("condition", ColumnType.INTEGER, ColumnRole.LABEL, categories=("0", "1")),
    ColumnSpec("weight", ColumnType.FLOAT, ColumnRole.FEATURE),  # numeric, not categorical: no group
    ColumnSpec("day", ColumnType.STRING, ColumnRole.FEATURE),  # named like a derived column: left out
)


def test_the_text_form_round_trips_and_a_bad_shape_is_refused() -> None:
    for text in ("daily_mean:heart_rate", "readings:spo2", "time_in_range:spo2:90:100"):
        assert parse_view(text).text() == text
    assert parse_view("time_in_range:spo2:90.5:100") == StreamView("time_in_range", "spo2", 90.5, 100.0)
    for bad in ("daily_mean", "time_in_range:spo2:90", "time_in_range:spo2:low:high", ":spo2"):
        with pytest.raises(ValueError):
            parse_view(bad)
    view = StreamView("time_in_range", "spo2", 0.1, 100.0)
    assert StreamView.from_json(view.to_json()) == view


@pytest.mark.parametrize(("view", "fields"), [
    (StreamView("daily_mean", "heart_rate"), set()),
    (StreamView("time_in_range", "spo2", 90.0, 90.0), set()),
    (StreamView("weekly_mean", "heart_rate"), {"stream_view.kind"}),
    (StreamView("daily_mean", "glucose"), {"stream_view.channel"}),
    (StreamView("daily_mean", "arm"), {"stream_view.channel"}),  # a column, not a channel
    (StreamView("readings", "spo2", 1.0, 2.0), {"stream_view.low"}),
    (StreamView("time_in_range", "spo2", 100.0, 90.0), {"stream_view.low"}),
    (StreamView("time_in_range", "spo2"), {"stream_view.low", "stream_view.high"}),
    (StreamView("time_in_range", "spo2", float("nan"), 1.0), {"stream_view.low"}),
])
def test_a_view_is_checked_against_the_stream_by_field(view, fields) -> None:
    violations = validate_view(view, STREAM)
    assert {v.field for v in violations} == fields
    assert all("glucose" not in v.description for v in violations)  # a rule, never the value


def test_the_derived_columns_are_the_patient_key_the_groups_and_the_view_s_own() -> None:
    assert [c.name for c in group_columns(COLUMNS, STREAM)] == ["arm", "condition"]
    daily = view_columns(StreamView("daily_mean", "heart_rate"), COLUMNS, STREAM)
    assert [(c.name, c.type) for c in daily] == [
        ("patient", ColumnType.STRING), ("arm", ColumnType.STRING), ("condition", ColumnType.INTEGER),
        ("day", ColumnType.INTEGER), ("heart_rate_daily_mean", ColumnType.FLOAT)]
    assert [c.name for c in view_columns(StreamView("readings", "spo2"), COLUMNS, STREAM)][-1] == "spo2"
    in_range = view_columns(StreamView("time_in_range", "spo2", 90.0, 100.0), COLUMNS, STREAM)
    assert [c.name for c in in_range][-1] == "spo2_time_in_range" and "day" not in [c.name for c in in_range]
