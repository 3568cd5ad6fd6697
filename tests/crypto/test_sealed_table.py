"""Sealed stream tables (crypto/sealed_table.py): round trip, span reads that decrypt little, and
refusal of tampered, truncated or mis-keyed blobs."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cleanroom import crypto
from cleanroom.crypto.sealed_table import BATCH_ROWS, CHUNK_SIZE, SealedTable
from cleanroom.domain.errors import IntegrityError
from tests.crypto.stream_data import BLOB_ID, SCHEMA, CountingFile, readings, seal


@pytest.fixture(scope="module")
def key() -> bytes:
    return crypto.new_data_key()


@pytest.fixture(scope="module")
def patients() -> list[pa.Table]:
    sizes = [300, 2 * BATCH_ROWS + 500, 1, 4000, 1200]  # one patient spans three batches
    return [readings(f"pseudo-{i}", n, seed=i) for i, n in enumerate(sizes)]


@pytest.fixture(scope="module")
def blob(patients: list[pa.Table], key: bytes) -> bytes:
    return seal(patients, key, chunk_size=1 << 16)


def _open(blob: bytes, key: bytes) -> SealedTable:
    return SealedTable(io.BytesIO(blob), key, BLOB_ID)


def test_every_patient_comes_back_whole_and_in_order(blob: bytes, key: bytes, patients: list[pa.Table]) -> None:
    with _open(blob, key) as table:
        assert [s.patient for s in table.spans] == [p.column("pid")[0].as_py() for p in patients]
        assert table.rows == sum(p.num_rows for p in patients)
        assert table.schema.remove_metadata() == SCHEMA
        for (name, rows), original in zip(table.iter_patients(), patients, strict=True):
            assert rows.equals(original.cast(table.schema)), name
        big = table.span("pseudo-1")
        assert big is not None and big.end_batch - big.first_batch == 3 and big.rows == 2 * BATCH_ROWS + 500
        assert (big.first_time, big.last_time) == (patients[1].column("t")[0].as_py(), patients[1].column("t")[-1].as_py())


def test_a_span_read_returns_exactly_the_rows_in_the_range(blob: bytes, key: bytes, patients: list[pa.Table]) -> None:
    original = patients[1]
    times = original.column("t").to_numpy()
    with _open(blob, key) as table:
        for lo, hi in [(times[10] + 1, times[BATCH_ROWS + 5]), (times[BATCH_ROWS], times[BATCH_ROWS]),
                       (None, times[7]), (times[-3], None), (times[0] - 100, times[0] - 1), (times[-1] + 1, None)]:
            got = table.read_span("pseudo-1", lo, hi)
            keep = np.ones(len(times), dtype=bool)
            if lo is not None:
                keep &= times >= lo
            if hi is not None:
                keep &= times <= hi
            assert got.equals(original.filter(pa.array(keep)).cast(table.schema)), (lo, hi)
        assert table.read_span("no-such-patient").num_rows == 0
        assert table.span("no-such-patient") is None


def test_one_patient_s_span_decrypts_a_small_part_of_a_large_blob(key: bytes) -> None:
    many = [readings(f"p{i}", 6_000, seed=50 + i) for i in range(40)]
    many.insert(17, readings("long", 4 * BATCH_ROWS, seed=49))
    data = seal(many, key)  # the production chunk size
    whole, per_row = len(data), len(data) / sum(t.num_rows for t in many)
    file = CountingFile(data)
    with SealedTable(file, key, BLOB_ID) as table:
        opened = file.bytes_read
        span = table.span("long")
        assert span is not None
        lo, hi = span.first_time + 5 * 3600, span.first_time + 5 * 3600 + 600
        rows = table.read_span("long", lo, hi)
        ten_minutes = file.bytes_read - opened
        table.read_span("p23")
        patient = file.bytes_read - opened - ten_minutes
    assert 0 < rows.num_rows <= 601
    assert rows.column("t").to_pylist() == [t for t in many[17].column("t").to_pylist() if lo <= t <= hi]
    assert opened < 0.02 * whole, (opened, whole)  # trailer, index, Arrow footer and the chunk prefixes
    # At most two batches (a range may straddle one boundary) and a sealed chunk on either side:
    # well under half of the long patient's four batches, and a few per cent of the blob.
    assert ten_minutes <= 2 * BATCH_ROWS * per_row + 2 * CHUNK_SIZE, (ten_minutes, whole)
    assert ten_minutes < 0.5 * 4 * BATCH_ROWS * per_row
    assert patient < 0.05 * whole, (patient, whole)


def test_a_tampered_chunk_fails_when_read(blob: bytes, key: bytes) -> None:
    tampered = bytearray(blob)
    tampered[len(blob) // 3] ^= 0x01  # inside pseudo-1's batches, far from the index
    with _open(bytes(tampered), key) as table, pytest.raises(IntegrityError):
        table.read_span("pseudo-1")


def test_tampering_with_the_index_or_trailer_fails_at_open(blob: bytes, key: bytes) -> None:
    tampered = bytearray(blob)
    tampered[-20] ^= 0x80
    with pytest.raises(IntegrityError):
        _open(bytes(tampered), key)


@pytest.mark.parametrize("cut", [1, 100, (1 << 16) + 40])
def test_a_truncated_blob_fails_at_open(blob: bytes, key: bytes, cut: int) -> None:
    with pytest.raises(IntegrityError):
        _open(blob[:-cut], key)


def test_the_wrong_key_or_blob_id_fails_at_open(blob: bytes, key: bytes) -> None:
    with pytest.raises(IntegrityError):
        _open(blob, crypto.new_data_key())
    with pytest.raises(IntegrityError):
        SealedTable(io.BytesIO(blob), key, "another-dataset")


def test_a_sealed_blob_without_the_stream_trailer_is_refused(key: bytes) -> None:
    with pytest.raises(IntegrityError):
        _open(crypto.seal_bytes(b"an arrow stream, not a stream table" * 10, key, BLOB_ID), key)


def test_a_patient_whose_batches_are_not_consecutive_is_refused(key: bytes) -> None:
    first = readings("pseudo-a", 100, seed=1)
    later = readings("pseudo-a", 100, seed=2, start=1_800_000_000)
    data = seal([first, readings("pseudo-b", 100, seed=3), later], key)
    with pytest.raises(IntegrityError):
        _open(data, key)


def test_span_bounds_select_whole_batches_only_where_needed(blob: bytes, key: bytes, patients: list[pa.Table]) -> None:
    """A range inside the big patient's last batch reads that batch alone."""
    times = patients[1].column("t")
    lo = times[2 * BATCH_ROWS + 10].as_py()
    with _open(blob, key) as table:
        loaded: list[int] = []
        batch = table.batch
        table.batch = lambda number: loaded.append(number) or batch(number)  # type: ignore[method-assign]
        got = table.read_span("pseudo-1", lo, lo + 30)
        span = table.span("pseudo-1")
    assert span is not None and loaded == [span.end_batch - 1]
    assert pc.min(got.column("t")).as_py() >= lo
