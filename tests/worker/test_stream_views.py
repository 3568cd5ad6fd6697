"""The worker's derivation of stream views from one patient's readings at a time."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest

from cleanroom import crypto
from cleanroom.crypto.sealed_table import SealedTable, SealedTableWriter
from cleanroom.domain.stream_views import StreamView
from cleanroom.worker.stream_views import StreamLayout, derive, time_in_range

SCHEMA = pa.schema([("patient", pa.string()), ("time", pa.int64()), ("hr", pa.float32()), ("arm", pa.string())])
LAYOUT = StreamLayout("patient", "time", 1, ("arm",))
DAY = 86_400


def _patient(name: str, times: list[int], hr: list[float | None], arm: list[str | None]) -> pa.Table:
    return pa.table({"patient": [name] * len(times), "time": times, "hr": hr, "arm": arm}, schema=SCHEMA)


def _sealed(*patients: pa.Table) -> SealedTable:
    key, sink = crypto.new_data_key(), io.BytesIO()
    writer = SealedTableWriter(sink, key, "d1", SCHEMA, patient_column="patient", time_column="time")
    for table in patients:
        writer.write_patient(table)
    writer.close()
    return SealedTable(io.BytesIO(sink.getvalue()), key, "d1")


def test_daily_means_are_per_day_since_the_first_reading_with_the_first_group_value() -> None:
    # days count from the first reading (t = 100): t = DAY + 50 is still day 0
    p1 = _patient("p1", [100, 200, DAY + 50, DAY + 150, 2 * DAY + 100], [60.0, 80.0, None, 90.0, 50.0], [None, "b", "a", "a", "a"])
    p2 = _patient("p2", [0, 10], [None, None], ["a", "a"])  # no reading of the channel: no row
    sealed = _sealed(p1, p2)
    table = derive(sealed.iter_patients(), sealed.schema, StreamView("daily_mean", "hr"), LAYOUT, rows=1)
    assert table.column_names == ["patient", "arm", "day", "hr_daily_mean"]
    assert table.to_pylist() == [
        {"patient": "p1", "arm": "b", "day": 0, "hr_daily_mean": 70.0},  # 60, 80 (the null reading skipped)
        {"patient": "p1", "arm": "b", "day": 1, "hr_daily_mean": 90.0},
        {"patient": "p1", "arm": "b", "day": 2, "hr_daily_mean": 50.0},
    ]


def test_readings_are_drawn_without_replacement_up_to_the_bound() -> None:
    many = _patient("p1", list(range(1000)), [float(i) for i in range(1000)], ["a"] * 1000)
    few = _patient("p2", [0, 1, 2], [1.0, None, 3.0], ["b"] * 3)
    sealed = _sealed(many, few)
    table = derive(sealed.iter_patients(), sealed.schema, StreamView("readings", "hr"), LAYOUT, rows=25,
                   rng=np.random.default_rng(1))
    rows = table.to_pylist()
    drawn = [r["hr"] for r in rows if r["patient"] == "p1"]
    assert len(drawn) == 25 and len(set(drawn)) == 25 and drawn != list(range(25))
    assert [r["hr"] for r in rows if r["patient"] == "p2"] == [1.0, 3.0]


def test_time_in_range_weighs_each_reading_until_the_next_and_a_gap_is_not_observed() -> None:
    view = StreamView("time_in_range", "hr", 60.0, 100.0)
    times = np.array([0, 60, 120, 7320, 7380])  # a two-hour gap after the third reading
    values = np.array([70.0, 120.0, 130.0, 80.0, 90.0])
    # held: 60, 60, 60 (capped), 60, 1 (the last) -> in range: 60 + 60 + 1 of 241
    assert time_in_range(times, values, view, cap=60, last=1) == pytest.approx(121 / 241)
    assert time_in_range(times[:0], values[:0], view, cap=60, last=1) is None
    sealed = _sealed(_patient("p1", times.tolist(), values.tolist(), ["a"] * 5))
    table = derive(sealed.iter_patients(), sealed.schema, view, LAYOUT, rows=1)
    assert table.column("hr_time_in_range").to_pylist() == [pytest.approx(121 / 241)]
