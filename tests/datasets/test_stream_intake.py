"""Stream intake (cleanroom.datasets.stream_intake): interleaved uploads stored patient by patient in
a sealed stream table, time shifts, coarsening, Parquet, and every bad input named by column."""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleanroom import crypto
from cleanroom.crypto.sealed_table import SealedTable
from cleanroom.datasets import intake as intake_module
from cleanroom.datasets.deidentify import Pseudonymizer
from cleanroom.datasets.intake import IntakeResult
from cleanroom.datasets.stream_cells import DAY, shift_days
from cleanroom.datasets.stream_intake import ingest_stream, partition_count
from cleanroom.datasets.upload_stream import Trailer, UploadStream
from cleanroom.domain.deid import ColumnRole, ColumnSpec, ColumnType, validate_policy
from cleanroom.domain.errors import CleanroomError
from cleanroom.domain.streams import ChannelSpec, StreamSpec, validate_stream
from cleanroom.storage.blobs import BlobStore
from tests.datasets.test_deidentify import assert_no_leak, raised, violations

T, R = ColumnType, ColumnRole
KEY, SHIFT_KEY = b"k" * 32, b"s" * 32
BASE = 1_709_280_000  # 2024-03-01T08:00:00Z
HEADER = "name,pid,ts,hr,hr_unit,spo2,y\n"
COLUMNS = (
    ColumnSpec("name", T.STRING, R.DIRECT_IDENTIFIER),
    ColumnSpec("pid", T.STRING, R.PATIENT_KEY),
    ColumnSpec("ts", T.TIMESTAMP, R.TIME),
    ColumnSpec("hr", T.FLOAT, R.FEATURE),
    ColumnSpec("hr_unit", T.STRING, R.UNIT),
    ColumnSpec("spo2", T.INTEGER, R.FEATURE),
    ColumnSpec("y", T.INTEGER, R.LABEL),
)
SPEC = StreamSpec("ts", (ChannelSpec("hr", "bpm", "hr_unit"), ChannelSpec("spo2", "%")))


def iso(seconds: int, zone: str = "Z") -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + zone


def row(patient: str | None, seconds: int, hr: object = 70.0, *, unit: str = "bpm", spo2: object = 97, y: int = 0,
        ts: str | None = None) -> str:
    return f"Jane Doe,{patient or ''},{ts or iso(seconds)},{hr},{unit},{spo2},{y}\n"


def upload(data: bytes, piece: int = 4096) -> UploadStream:
    parts = [data[i:i + piece] for i in range(0, len(data), piece)]
    return UploadStream(iter([*parts, Trailer(len(data), hashlib.sha256(data).hexdigest())]), max_bytes=1 << 34)


def ingest(tmp_path: Path, data: bytes, *, spec: StreamSpec = SPEC, columns: tuple[ColumnSpec, ...] = COLUMNS,
           file_format: str = "csv", shift_key: bytes = SHIFT_KEY, key: bytes = KEY, **options: int) -> IntakeResult:
    assert validate_stream(columns, spec) == []
    return ingest_stream(upload(data), file_format=file_format, policy=validate_policy(columns, 5, stream=True),
                         spec=spec, pseudonymizer=Pseudonymizer(key), shift_key=shift_key,
                         blobs=BlobStore(tmp_path / "blobs"), dataset_id="ds1", data_key=DATA_KEY, **options)


DATA_KEY = crypto.new_data_key()


def stored(result: IntakeResult) -> dict[str, pa.Table]:
    """Commits the blob and reads every patient back, keyed by the raw patient key."""
    path = result.blob.commit()
    with open(path, "rb") as handle, SealedTable(handle, DATA_KEY, "ds1") as table:
        return {_raw(patient): rows for patient, rows in table.iter_patients()}


_PSEUDONYMS = {Pseudonymizer(KEY).pseudonymize(pa.array([p]))[0].as_py(): p for p in [f"p{i}" for i in range(200)]}


def _raw(pseudonym: str) -> str:
    return _PSEUDONYMS[pseudonym]


def files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file())


# ---------------------------------------------------------------- order and spans


def interleaved(patients: int, readings: int, step: int = 1) -> bytes:
    lines = [row(f"p{p}", BASE + i * step + p, hr=60 + i + p) for i in range(readings) for p in range(patients)]
    return (HEADER + "".join(lines)).encode()


def test_an_interleaved_upload_is_stored_patient_by_patient_in_time_order(tmp_path, monkeypatch):
    monkeypatch.setattr(intake_module, "BATCH_BYTES", 2048)  # many batches, patients across them
    result = ingest(tmp_path, interleaved(7, 300))
    by_patient = stored(result)
    assert sorted(by_patient) == [f"p{i}" for i in range(7)] and result.patient_count == 7
    for patient, rows in by_patient.items():
        p = int(patient[1:])
        assert rows.column("ts").to_pylist() == [BASE + i + p for i in range(300)]
        assert rows.column("hr").to_pylist() == [60.0 + i + p for i in range(300)]
        assert set(rows.column("pid").to_pylist()) != {patient}  # pseudonymised
    assert result.report.rows_received == result.report.rows_stored == 2100
    assert files(tmp_path) == ["ds1.blob"]  # every temporary partition removed


def test_one_patients_span_reads_alone_and_by_time(tmp_path, monkeypatch):
    monkeypatch.setattr("cleanroom.crypto.sealed_table.BATCH_ROWS", 64)  # a patient spans many batches
    result = ingest(tmp_path, interleaved(3, 1000))
    path = result.blob.commit()
    with open(path, "rb") as handle, SealedTable(handle, DATA_KEY, "ds1") as table:
        pseudonym = next(s for s, raw in _PSEUDONYMS.items() if raw == "p1")
        span = table.span(pseudonym)
        assert span is not None and span.rows == 1000 and span.end_batch - span.first_batch == 16
        assert (span.first_time, span.last_time) == (BASE + 1, BASE + 1 + 999)
        window = table.read_span(pseudonym, BASE + 101, BASE + 200)
        assert window.column("ts").to_pylist() == list(range(BASE + 101, BASE + 201))
        assert set(window.column("pid").to_pylist()) == {pseudonym}


def test_rows_without_a_patient_key_are_dropped_and_counted(tmp_path):
    data = HEADER + row("p1", BASE) + row(None, BASE + 1) + row("p1", BASE + 2)
    result = ingest(tmp_path, data.encode())
    assert result.report.rows_without_patient_key == 1 and result.report.rows_stored == 2
    assert result.report.dropped_columns == ("name", "hr_unit") and result.report.pseudonymized_columns == ("pid",)
    assert "name" not in stored(result)["p1"].column_names


def test_the_summary_counts_readings_spans_gaps_and_channels(tmp_path):
    lines = [row("p1", BASE + s, spo2="" if s == 30 else 97) for s in (0, 10, 30, 200, 210)]  # one gap (> 60 s)
    lines += [row("p2", BASE + s) for s in (0, 1000, 5000)]  # two gaps
    lines += [row("p3", BASE)]
    summary = ingest(tmp_path, (HEADER + "".join(lines)).encode()).report.stream
    assert summary is not None
    assert (summary.readings, summary.patients, summary.gaps, summary.gap_seconds) == (9, 3, 3, 60)
    assert (summary.shortest_span_seconds, summary.median_span_seconds, summary.longest_span_seconds) == (0, 210, 5000)
    assert summary.channels == (("hr", "bpm", 9), ("spo2", "%", 8))
    assert summary.time_zone == "UTC" and summary.readings_merged == 0 and summary.max_shift_days == 0


# ---------------------------------------------------------------- time shifts


def test_times_shift_by_whole_days_per_patient_keeping_the_time_of_day(tmp_path):
    spec = StreamSpec("ts", SPEC.channels, max_shift_days=60)
    result = ingest(tmp_path, interleaved(20, 50, step=7), spec=spec)
    offsets = {}
    for patient, rows in stored(result).items():
        p = int(patient[1:])
        shifts = {t - (BASE + i * 7 + p) for i, t in enumerate(rows.column("ts").to_pylist())}
        assert len(shifts) == 1  # one offset for all of a patient's readings
        offset = shifts.pop()
        assert offset % DAY == 0 and -60 * DAY <= offset <= 60 * DAY  # whole days: the time of day kept
        pseudonym = rows.column("pid")[0].as_py()
        assert offset == shift_days(SHIFT_KEY, pseudonym, 60) * DAY  # a keyed hash of the pseudonym
        offsets[patient] = offset
    assert len(set(offsets.values())) > 10  # differs between patients
    assert result.report.stream is not None and result.report.stream.max_shift_days == 60
    assert any("secret whole number of days" in note for note in result.report.notes)


def test_the_shift_is_deterministic_per_pseudonym_and_secret_under_its_key(tmp_path):
    spec = StreamSpec("ts", SPEC.channels, max_shift_days=365)
    data = interleaved(10, 5)
    first = {p: r.column("ts").to_pylist() for p, r in stored(ingest(tmp_path / "a", data, spec=spec)).items()}
    again = {p: r.column("ts").to_pylist() for p, r in stored(ingest(tmp_path / "b", data, spec=spec)).items()}
    other = {p: r.column("ts").to_pylist()
             for p, r in stored(ingest(tmp_path / "c", data, spec=spec, shift_key=b"t" * 32)).items()}
    assert first == again and first != other


def test_no_shift_when_max_shift_days_is_zero(tmp_path):
    result = ingest(tmp_path, interleaved(5, 10))
    for patient, rows in stored(result).items():
        assert rows.column("ts").to_pylist() == [BASE + i + int(patient[1:]) for i in range(10)]
    assert "ts: times were not shifted" in result.report.notes
    assert shift_days(SHIFT_KEY, "anything", 0) == 0


# ---------------------------------------------------------------- coarsening


def test_readings_in_one_cell_are_averaged_and_other_columns_keep_the_last(tmp_path):
    spec = StreamSpec("ts", SPEC.channels, time_resolution_seconds=10)
    lines = [row("p1", BASE + 0, hr=60, spo2=90, y=0), row("p1", BASE + 3, hr="", spo2=94, y=1),
             row("p1", BASE + 9, hr=70, spo2=98, y=2), row("p1", BASE + 10, hr=80, spo2="", y=3),
             row("p1", BASE + 25, hr="", spo2="", y=4)]
    result = ingest(tmp_path, (HEADER + "".join(lines)).encode(), spec=spec)
    rows = stored(result)["p1"]
    assert rows.column("ts").to_pylist() == [BASE, BASE + 10, BASE + 20]
    assert rows.column("hr").to_pylist() == [65.0, 80.0, None]  # missing readings are not zeros
    assert rows.column("spo2").to_pylist() == [94.0, None, None]
    assert rows.column("y").to_pylist() == [2, 3, 4]
    assert rows.schema.field("hr").type == pa.float32() and rows.schema.field("spo2").type == pa.float32()
    summary = result.report.stream
    assert summary is not None and summary.readings_merged == 2 and summary.readings == 3
    assert summary.gap_seconds == 100 and summary.time_resolution_seconds == 10


def test_nan_and_infinite_readings_are_missing(tmp_path):
    lines = [row("p1", BASE, hr="nan"), row("p1", BASE + 1, hr="inf"), row("p1", BASE + 2, hr="1e300"), row("p1", BASE + 3)]
    result = ingest(tmp_path, (HEADER + "".join(lines)).encode())
    assert stored(result)["p1"].column("hr").to_pylist() == [None, None, None, 70.0]
    assert result.report.stream is not None and result.report.stream.channels[0] == ("hr", "bpm", 1)


def test_sub_second_readings_are_ordered_by_their_fraction_and_merged_into_their_second(tmp_path):
    lines = [row("p1", 0, hr=60, ts="2024-03-01T08:00:00.25Z"), row("p1", 0, hr=62, ts="2024-03-01T08:00:00.750Z"),
             row("p1", 0, hr=64, ts="2024-03-01T08:00:01Z")]
    result = ingest(tmp_path, (HEADER + "".join(lines)).encode())
    rows = stored(result)["p1"]
    assert rows.column("ts").to_pylist() == [BASE, BASE + 1] and rows.column("hr").to_pylist() == [61.0, 64.0]


# ---------------------------------------------------------------- time formats


@pytest.mark.parametrize(("text", "zone"), [
    ("2024-03-01T17:00:00+09:00", "+09:00"), ("2024-03-01 17:00:00+0900", "+09:00"), ("2024-03-01T08:00:00", "UTC"),
    ("2024-03-01T08:00Z", "UTC"), ("2024-03-01T03:30:00-04:30", "-04:30"), ("1709280000", ""),
])
def test_iso_offsets_naive_and_epoch_seconds_are_read_as_utc_epoch_seconds(tmp_path, text, zone):
    result = ingest(tmp_path, (HEADER + row("p1", 0, ts=text)).encode())
    assert stored(result)["p1"].column("ts").to_pylist() == [BASE]
    assert result.report.stream is not None and result.report.stream.time_zone == zone


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=4)
    return sink.getvalue()


@pytest.mark.parametrize("times", [
    pa.array([BASE + 2 * i for i in range(10)], pa.timestamp("s", tz="Asia/Seoul")),
    pa.array([(BASE + 2 * i) * 1000 for i in range(10)], pa.timestamp("ms")),
    pa.array([BASE + 2 * i for i in range(10)], pa.int64()),
    pa.array([iso(BASE + 2 * i, "+00:00") for i in range(10)], pa.large_string()),
    pa.array([iso(BASE + 2 * i) for i in range(10)]).dictionary_encode(),
])
def test_parquet_streams_with_timestamp_integer_or_text_times(tmp_path, times):
    patients = ["p1", "p2"] * 5
    table = pa.table({"name": ["x"] * 10, "pid": patients, "ts": times, "hr": [float(i) for i in range(10)],
                      "hr_unit": ["bpm"] * 10, "spo2": pa.array([97] * 10, pa.int32()), "y": [0] * 10})
    result = ingest(tmp_path, _parquet(table), file_format="parquet")
    by_patient = stored(result)
    assert by_patient["p1"].column("ts").to_pylist() == [BASE + 4 * i for i in range(5)]
    assert by_patient["p2"].column("hr").to_pylist() == [1.0, 3.0, 5.0, 7.0, 9.0]
    assert files(tmp_path) == ["ds1.blob"]  # the staged raw file is gone too


# ---------------------------------------------------------------- bad input: named by column, never by value


def refused(tmp_path: Path, lines: list[str], canary: str | None = None, **options: object) -> CleanroomError:
    error = raised(lambda: ingest(tmp_path, (HEADER + "".join(lines)).encode(), **options))  # type: ignore[arg-type]
    if canary is not None:
        assert_no_leak(error, canary)
    assert files(tmp_path) == []  # nothing stored, no partition left behind
    return error


def test_a_timestamp_out_of_order_within_a_patient_is_refused(tmp_path):
    lines = [row("p1", BASE + 10), row("p2", BASE), row("p1", BASE + 5, hr=123.456)]
    error = refused(tmp_path, lines, canary="123.456")
    assert violations(error) == {("columns[ts]", "row 3: timestamps out of order or duplicated within a patient "
                                                 "(each patient's times must increase)")}


def test_a_duplicated_timestamp_is_refused_even_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(intake_module, "BATCH_BYTES", 256)
    lines = [row("p1", BASE + i) for i in range(40)] + [row("p2", BASE)] + [row("p1", BASE + 39)]
    error = refused(tmp_path, lines)
    assert [v.field for v in error.violations] == ["columns[ts]"]
    assert "row 42: timestamps out of order or duplicated" in error.violations[0].description


def test_patients_may_interleave_with_earlier_times_than_each_other(tmp_path):
    lines = [row("p1", BASE + 100), row("p2", BASE), row("p1", BASE + 101), row("p2", BASE + 1)]
    assert ingest(tmp_path, (HEADER + "".join(lines)).encode()).report.rows_stored == 4


MIXED_ZONES = ("columns[ts]", "timestamps carry different UTC offsets (or some one and some none): "
                              "use one offset for the whole column")


@pytest.mark.parametrize(("second", "violation"), [
    ("2024-03-01T08:00:01+09:00", MIXED_ZONES), ("2024-03-01T08:00:01", MIXED_ZONES),
    ("1709280001", ("columns[ts]", "row 2: ISO 8601 date-times and epoch seconds mixed in one column")),
])
def test_mixed_time_zones_are_refused(tmp_path, second, violation):
    lines = [row("p1", 0, ts="2024-03-01T08:00:00+05:00"), row("p2", 0, ts=second)]
    error = refused(tmp_path, lines, canary="+05:00")
    assert violations(error) == {violation}


def test_one_offset_written_two_ways_is_one_zone(tmp_path):
    lines = [row("p1", 0, ts="2024-03-01T08:00:00Z"), row("p1", 0, ts="2024-03-01T08:00:01+00:00")]
    assert stored(ingest(tmp_path, (HEADER + "".join(lines)).encode()))["p1"].column("ts").to_pylist() == [BASE, BASE + 1]


def test_mixed_time_zones_across_batches_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(intake_module, "BATCH_BYTES", 256)
    lines = [row("p1", BASE + i) for i in range(30)] + [row("p1", 0, ts="2024-03-02T08:00:00")]
    assert violations(refused(tmp_path, lines)) == {MIXED_ZONES}


@pytest.mark.parametrize(("text", "rule"), [
    ("yesterday-CANARY", "not an ISO 8601 date-time"), ("2024-13-45T08:00:00Z", "not a valid date and time of day"),
    ("2024-02-30T08:00:00", "not a valid date and time of day"), ("2024-03-01T8:00:00Z", "not an ISO 8601 date-time"),
    ("1709280000000", "not milliseconds"), ("", "a reading has no time"),
])
def test_an_unreadable_timestamp_names_the_column_and_row(tmp_path, text, rule):
    first = str(BASE) if text.isdigit() else iso(BASE, "Z" if text.endswith("Z") else "")
    error = refused(tmp_path, [row("p1", 0, ts=first), row("p1", 0, ts=text or "NULL")], canary=text or None)
    assert [v.field for v in error.violations] == ["columns[ts]"]
    assert error.violations[0].description.startswith("row 2: ") and rule in error.violations[0].description


def test_a_unit_changing_mid_stream_is_refused_naming_the_unit_column_and_channel(tmp_path, monkeypatch):
    monkeypatch.setattr(intake_module, "BATCH_BYTES", 256)
    lines = [row("p1", BASE + i) for i in range(30)] + [row("p1", BASE + 30, unit="beats/CANARY")]
    error = refused(tmp_path, lines, canary="CANARY")
    assert violations(error) == {("columns[hr_unit]", "row 31: a unit other than the declared unit of channel hr "
                                                      "(a channel's unit must not change mid-stream)")}


def test_a_missing_unit_passes_only_without_a_reading(tmp_path):
    ok = ingest(tmp_path / "a", (HEADER + row("p1", BASE, hr="", unit="") + row("p1", BASE + 1, unit=" bpm ")).encode())
    assert ok.report.rows_stored == 2
    refused(tmp_path / "b", [row("p1", BASE, hr=72, unit="")])


def test_an_identifier_in_a_kept_column_is_refused(tmp_path):
    columns = (*COLUMNS, ColumnSpec("note", T.STRING, R.FEATURE))
    data = HEADER.replace("\n", ",note\n") + row("p1", BASE).replace("\n", ",call 010-1234-5678\n")
    with pytest.raises(CleanroomError) as caught:
        ingest(tmp_path, data.encode(), columns=columns)
    assert caught.value.code.name == "SENSITIVE_DATA_FOUND" and [v.field for v in caught.value.violations] == ["columns[note]"]
    assert files(tmp_path) == []


# ---------------------------------------------------------------- partitions


def test_partitions_follow_the_declared_size():
    assert partition_count(0) == 64
    assert partition_count(1000) == 1
    assert partition_count(1 << 30) == 16
    assert partition_count(1 << 40) == 256


@pytest.mark.parametrize("declared", [0, 1, 100])  # unknown (64), exact (many partitions), 100 x (one)
def test_the_result_does_not_depend_on_how_many_partitions(tmp_path, declared):
    data = interleaved(30, 20)
    result = ingest(tmp_path, data, size_bytes=declared * len(data), partition_bytes=4096 * max(declared, 1) ** 2)
    by_patient = stored(result)
    assert len(by_patient) == 30 and all(t.num_rows == 20 for t in by_patient.values())


def test_a_file_larger_than_its_declared_size_is_refused(tmp_path):
    error = raised(lambda: ingest(tmp_path, interleaved(3, 10), size_bytes=100))
    assert violations(error) == {("metadata.size_bytes", "smaller than the file")}
    assert files(tmp_path) == []


def test_an_error_in_the_second_pass_leaves_nothing(tmp_path, monkeypatch):
    from cleanroom.datasets import stream_cells

    def fail(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(stream_cells.Cells, "patients", fail)
    with pytest.raises(RuntimeError):
        ingest(tmp_path, interleaved(5, 5))
    assert files(tmp_path) == []


def test_per_patient_counts_are_exact_under_many_patients(tmp_path):
    counts: dict[str, int] = defaultdict(int)
    lines = []
    for i in range(600):
        patient = f"p{(i * 7) % 150}"
        counts[patient] += 1
        lines.append(row(patient, BASE + i))
    result = ingest(tmp_path, (HEADER + "".join(lines)).encode(), partition_bytes=1024, size_bytes=1 << 20)
    assert {p: t.num_rows for p, t in stored(result).items()} == counts


def skewed() -> bytes:
    """Two patients with 40 and 60 times the readings of each of 20 others: one reading every 3 s, so
    10 s cells merge some and a piece can end inside a cell, a gap now and then; the other every 200 s."""
    lines = [row("p0", BASE + 3 * i + 500 * (i // 700), hr=60 + i % 17) for i in range(3000)]
    lines += [row(f"p{p}", BASE + 3 * i, hr=70 + p) for i in range(50) for p in range(1, 21)]
    lines += [row("p21", BASE + 200 * i) for i in range(2000)]  # a gap before every reading: at every piece's edge too
    return (HEADER + "".join(lines)).encode()


def test_a_patient_larger_than_a_partition_is_read_in_pieces_and_stored_the_same(tmp_path, monkeypatch):
    from cleanroom.datasets import stream_partitions

    spec = StreamSpec("ts", SPEC.channels, time_resolution_seconds=10, max_shift_days=3)
    data = skewed()
    whole = ingest(tmp_path / "whole", data, spec=spec)
    pieces: list[tuple[str, int]] = []
    real = stream_partitions.Partitions.read_back

    def spied(self, hold_bytes):
        for piece in real(self, hold_bytes):
            pieces.append((piece.patient, piece.table.num_rows))
            yield piece

    monkeypatch.setattr(stream_partitions.Partitions, "read_back", spied)
    small = ingest(tmp_path / "small", data, spec=spec, size_bytes=len(data), partition_bytes=8192)
    big = [rows for patient, rows in pieces if patient]
    assert len(big) > 5 and max(rows for _, rows in pieces) < 1000  # p0 came back in pieces, nobody whole
    assert sum(rows for _, rows in pieces) == 6000
    assert small.report.stream == whole.report.stream  # spans, gaps, merged readings over the whole
    assert {p: t.to_pylist() for p, t in stored(small).items()} == {p: t.to_pylist() for p, t in stored(whole).items()}
