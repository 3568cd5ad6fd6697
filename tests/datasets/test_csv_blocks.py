"""The block-cut, typed CSV reader (cleanroom.datasets.readers) and the one-pass intake."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest

from cleanroom import crypto
from cleanroom.datasets import intake as intake_module
from cleanroom.datasets.deidentify import MAX_ROW_BYTES, Pseudonymizer, read_csv_batches
from cleanroom.datasets.intake import ingest
from cleanroom.datasets.upload_stream import Trailer, UploadStream
from cleanroom.storage.blobs import BlobStore
from tests.datasets.test_deidentify import CSV_POLICY, HEADER, assert_no_leak, raised, read_csv, violations


def table(text, **kwargs) -> pa.Table:
    return pa.Table.from_batches(read_csv(text, **kwargs))


def test_rows_cut_anywhere_come_back_whole_and_in_order():
    rows = "".join(f"n{i},true,p{i},{i}.25,{i},2024-01-02\n" for i in range(500))
    for block_size in (7, 64, 100, 4096):  # smaller than a row, too
        t = table(HEADER + rows, block_size=block_size)
        assert t.column("n").to_pylist() == list(range(500)) and t.schema.field("hr").type == pa.float64()


def test_crlf_blank_lines_and_no_final_newline():
    text = "\r\n" + HEADER.replace("\n", "\r\n") + "a,true,p1,1.5,1,2024-01-02\r\n\r\nb,false,p2,2.5,2,2024-01-03"
    t = table(text, block_size=16)
    assert t.column("pid").to_pylist() == ["p1", "p2"] and t.column("ok").to_pylist() == [True, False]


def test_a_row_longer_than_the_limit_is_refused_without_its_content(monkeypatch):
    monkeypatch.setattr("cleanroom.datasets.readers.MAX_ROW_BYTES", 1000)
    text = HEADER + "a,true,p1,1.5,1,2024-01-02\n" + "CANARY" * 400
    error = raised(read_csv, text, block_size=64)
    assert violations(error) == {("file", "a row is longer than 1,000 bytes")}
    assert_no_leak(error, "CANARY")
    assert MAX_ROW_BYTES >= 1 << 20


def test_spellings_only_the_cast_accepts_are_still_accepted():
    # pyarrow's typed reader refuses "tRuE"; the row-naming path (a cast) accepts it: the block is
    # re-read that way rather than refused.
    t = table(HEADER + "a,tRuE,p1,1.5,1,2024-01-02\nb,FALSE,p2,2,2,2024-01-03\n")
    assert t.column("ok").to_pylist() == [True, False]


def test_the_error_row_counts_rows_of_earlier_blocks():
    rows = "".join(f"n{i},true,p{i},{i},{i},2024-01-02\n" for i in range(300))
    error = raised(read_csv, HEADER + rows + "x,true,p,1,1,2024-13-45\n", block_size=512)
    assert violations(error) == {("columns[seen]", "row 301: not a valid date (YYYY-MM-DD)")}


# ---------------------------------------------------------------- intake: the second pass only when needed


def _stream(data: bytes) -> UploadStream:
    import hashlib

    parts = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    return UploadStream(iter([*parts, Trailer(len(data), hashlib.sha256(data).hexdigest())]), max_bytes=1 << 30)


def _ingest(tmp_path, data: bytes):
    blobs = BlobStore(tmp_path / "blobs")
    key = crypto.new_data_key()
    result = ingest(_stream(data), file_format="csv", policy=CSV_POLICY, pseudonymizer=Pseudonymizer(b"k" * 32),
                    blobs=blobs, dataset_id="ds1", data_key=key)
    path = result.blob.commit()
    return result, path, key, blobs


def _stored(path, key) -> pa.Table:
    with open(path, "rb") as sealed:
        return pa.ipc.open_stream(crypto.as_arrow_file(crypto.SealedReader(sealed, key, "ds1"))).read_all()


@pytest.mark.parametrize("suppressed", [False, True])
def test_one_pass_when_no_class_is_small(tmp_path, monkeypatch, suppressed):
    passes = []
    real = intake_module._second_pass
    monkeypatch.setattr(intake_module, "_second_pass", lambda *a: passes.append(1) or real(*a))
    # CSV_POLICY has no quasi-identifier: one class. k=2 needs two patients in it.
    rows = "a,true,p1,1.5,1,2024-01-02\n" + ("" if suppressed else "b,false,p2,2.5,2,2024-01-03\n")
    result, path, key, blobs = _ingest(tmp_path, (HEADER + rows).encode())
    import hashlib

    assert passes == ([1] if suppressed else [])
    assert result.ciphertext_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert _stored(path, key).num_rows == result.report.rows_stored == (0 if suppressed else 2)
    assert result.report.rows_suppressed == (1 if suppressed else 0)
    assert [p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == ["ds1.blob"]  # no staging left


def test_a_refused_file_leaves_no_blob(tmp_path):
    rows = "".join(f"n{i},true,p{i},{i},{i},2024-01-02\n" for i in range(3000)) + "x,true,p,CANARY,1,2024-01-02\n"
    blobs = BlobStore(tmp_path / "blobs")
    error = raised(lambda: ingest(_stream((HEADER + rows).encode()), file_format="csv", policy=CSV_POLICY,
                                  pseudonymizer=Pseudonymizer(b"k" * 32), blobs=blobs, dataset_id="ds1",
                                  data_key=crypto.new_data_key()))
    assert_no_leak(error, "CANARY")
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []


def test_read_csv_batches_reads_a_plain_file_object():
    data = (HEADER + "a,true,p1,1.5,1,2024-01-02\n").encode()
    assert sum(b.num_rows for b in read_csv_batches(io.BytesIO(data), CSV_POLICY)) == 1


def test_rows_without_a_patient_key_are_dropped_and_patients_still_count(tmp_path):
    rows = "a,true,p1,1.5,1,2024-01-02\nb,true,,1.5,1,2024-01-02\nc,false,p2,2.5,2,2024-01-03\nd,false,p1,3,3,2024-01-04\n"
    result, path, key, _ = _ingest(tmp_path, (HEADER + rows).encode())
    assert result.report.rows_without_patient_key == 1 and result.patient_count == 2
    assert _stored(path, key).num_rows == result.report.rows_stored == 3
