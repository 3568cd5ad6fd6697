"""Dataset intake end to end over a real gRPC port: round trip, secrecy at rest, bad input, clean-up."""

from __future__ import annotations

import csv
import hashlib
import threading
import time
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cleanroom import crypto
from cleanroom.domain.errors import IntegrityError
from cleanroom.domain.identity import Role
from cleanroom.sdk import CleanroomClientError
from cleanroom.sdk.schema import Schema, parse_schema
from cleanroom.storage.identity import MARKER
from cleanroom.storage.tables import DatasetRow
from cleanroom.v1 import datasets_pb2
from tests.conftest import make_config, start_server

CANARIES = {"name": "CANARY-NAME-7731", "patient": "CANARY-PID-5519", "note": "CANARY-NOTE-2208"}

SCHEMA = {
    "k_anonymity": 2,
    "columns": [
        {"name": "patient_id", "type": "string", "role": "patient_key"},
        {"name": "full_name", "type": "string", "role": "direct_identifier"},
        {"name": "age", "type": "integer", "role": "quasi_identifier", "generalize": {"age_band": 10}},
        {"name": "postcode", "type": "string", "role": "quasi_identifier", "generalize": {"prefix": 2}},
        {"name": "visit", "type": "date", "role": "quasi_identifier", "generalize": {"date": "year"}},
        {"name": "note", "type": "string", "role": "feature"},
        {"name": "heart_rate", "type": "float", "role": "feature"},
        {"name": "outcome", "type": "integer", "role": "label"},
    ],
}
HEADER = [c["name"] for c in SCHEMA["columns"]]


def _rows(n_patients: int = 12, rows_each: int = 3) -> list[list[object]]:
    rows = []
    for p in range(n_patients):
        pid = CANARIES["patient"] if p == 0 else f"P{p:04d}"
        for r in range(rows_each):
            name = CANARIES["name"] if p == 0 else f"Person {p}"
            note = CANARIES["note"] if (p, r) == (0, 0) else "stable"
            rows.append([pid, name, 40 + p % 2, "06123", f"2024-{1 + r % 12:02d}-15", note, 60.5 + p + r, p % 2])
    rows.append(["P9999", "Loner", 81, "99999", "2021-05-05", "ok", 70.0, 1])  # a class of one patient
    return rows


def _write_csv(path: Path, rows: list[list[object]], header: list[str] = HEADER) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _schema(**changes: object) -> Schema:
    data = {"k_anonymity": SCHEMA["k_anonymity"], "columns": [dict(c) for c in SCHEMA["columns"]]}
    for column in data["columns"]:
        column.update(changes.get(column["name"], {}))  # type: ignore[arg-type]
    return parse_schema(data)


def _stored_table(running, dataset_name: str) -> pa.Table:
    reader = running.app.datasets.open_plaintext(dataset_name.removeprefix("datasets/"))
    with pa.ipc.open_stream(crypto.as_arrow_file(reader)) as stream:
        return stream.read_all()


@pytest.fixture
def owner(running):
    _, token = running.principal(Role.DATA_OWNER, "Hospital A")
    with running.client(token) as client:
        yield client


def _upload(owner, tmp_path: Path, rows=None, schema=None, **kwargs):
    path = _write_csv(tmp_path / "upload.csv", _rows() if rows is None else rows)
    return owner.upload_dataset(path, schema or _schema(), **kwargs)


def test_upload_round_trip(running, owner, tmp_path) -> None:
    progress: list[int] = []
    dataset = _upload(owner, tmp_path, display_name="vitals", progress=lambda sent, total: progress.append(sent))
    report = dataset.intake_report
    assert (report.rows_received, report.rows_stored, report.rows_suppressed) == (37, 36, 1)
    assert (report.equivalence_classes, report.classes_suppressed, report.k_anonymity) == (2, 1, 2)
    assert list(report.dropped_columns) == ["full_name"] and list(report.pseudonymized_columns) == ["patient_id"]
    assert (dataset.row_count, dataset.patient_count) == (36, 12)
    assert progress and progress[-1] == (tmp_path / "upload.csv").stat().st_size

    table = _stored_table(running, dataset.name)
    assert table.column_names == ["patient_id", "age", "postcode", "visit", "note", "heart_rate", "outcome"]
    assert table.num_rows == 36
    assert set(table.column("age").to_pylist()) == {"40-49"}
    assert set(table.column("postcode").to_pylist()) == {"06***"}
    assert set(table.column("visit").to_pylist()) == {"2024"}
    pseudonyms = set(table.column("patient_id").to_pylist())
    assert len(pseudonyms) == 12 and CANARIES["patient"] not in pseudonyms
    assert owner.get_dataset(dataset.name) == dataset
    assert [d.name for d in owner.list_datasets()] == [dataset.name]


def test_state_directory_holds_no_canary(running, owner, tmp_path) -> None:
    _upload(owner, tmp_path)
    state_dir = running.app.config.state_dir
    files = [p for p in state_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".blob" for p in files)
    for path in files:
        content = path.read_bytes()
        for canary in CANARIES.values():
            assert canary.encode() not in content, f"{canary} found in {path.name}"


def test_flipped_ciphertext_byte_fails_integrity(running, owner, tmp_path) -> None:
    dataset = _upload(owner, tmp_path)
    blob = running.app.datasets._blobs.path_of(dataset.name.removeprefix("datasets/"))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        _stored_table(running, dataset.name)


def test_kek_rotation_keeps_data_readable(running, owner, tmp_path) -> None:
    dataset = _upload(owner, tmp_path)
    before = _stored_table(running, dataset.name)
    key_file = running.app.config.state_dir / "keys" / "kek.json"
    old_key_file = key_file.read_bytes()
    with running.client(running.admin_token) as admin:
        rotated = admin.rotate_keys()
    assert rotated.rewrapped_data_keys >= 2  # the dataset key and the service secrets
    assert key_file.read_bytes() != old_key_file and rotated.key_id.encode() in key_file.read_bytes()
    assert _stored_table(running, dataset.name).equals(before)


def test_repeated_request_id_stores_once(running, owner, tmp_path) -> None:
    first = _upload(owner, tmp_path, request_id="upload-1")
    second = _upload(owner, tmp_path, request_id="upload-1")
    assert first == second
    assert len(list(owner.list_datasets())) == 1


def test_tenants_are_isolated(running, owner, tmp_path) -> None:
    dataset = _upload(owner, tmp_path)
    for role in (Role.DATA_OWNER, Role.MANUFACTURER):
        _, token = running.principal(role)
        with running.client(token) as other:
            assert list(other.list_datasets()) == []
            with pytest.raises(CleanroomClientError) as err:
                other.get_dataset(dataset.name)
            assert err.value.code is grpc.StatusCode.NOT_FOUND
    _, token = running.principal(Role.DATA_OWNER)
    with running.client(token) as other, pytest.raises(CleanroomClientError) as err:
        other.delete_dataset(dataset.name)
    assert err.value.code is grpc.StatusCode.NOT_FOUND
    assert owner.get_dataset(dataset.name).row_count == 36


def test_delete_shreds_key_and_blob(running, owner, tmp_path) -> None:
    dataset = _upload(owner, tmp_path)
    dataset_id = dataset.name.removeprefix("datasets/")
    blob = running.app.datasets._blobs.path_of(dataset_id)
    assert blob.exists()
    assert owner.delete_dataset(dataset.name).name == dataset.name
    assert not blob.exists()
    with running.app.db.transaction() as session:
        assert session.get(DatasetRow, dataset_id).wrapped_key is None
    with pytest.raises(CleanroomClientError) as err:
        owner.get_dataset(dataset.name)
    assert err.value.code is grpc.StatusCode.NOT_FOUND


def _write_parquet(rows: list[list[object]], path: Path) -> Path:
    """The rows as a Parquet file with typed columns (dates as dates), in row groups of 10."""
    columns = list(zip(*rows))
    types = [pa.string(), pa.string(), pa.int64(), pa.string(), pa.string(), pa.string(), pa.float64(), pa.int64()]
    table = pa.table({name: pa.array(values, type=t) for name, values, t in zip(HEADER, columns, types)})
    table = table.set_column(4, "visit", pa.array(columns[4]).cast(pa.date32()))
    pq.write_table(table, path, row_group_size=10)
    return path


def test_parquet_upload(running, owner, tmp_path) -> None:
    path = _write_parquet(_rows(), tmp_path / "upload.parquet")
    dataset = owner.upload_dataset(path, _schema())
    assert (dataset.row_count, dataset.patient_count) == (36, 12)
    assert _stored_table(running, dataset.name).num_rows == 36


# --- bad input -----------------------------------------------------------------------------------


def _expect_error(call, code: grpc.StatusCode) -> CleanroomClientError:
    with pytest.raises(CleanroomClientError) as err:
        call()
    assert err.value.code is code, err.value
    text = str(err.value)
    for canary in CANARIES.values():
        assert canary not in text
    assert "Traceback" not in text
    return err.value


def _nothing_stored(running, owner) -> None:
    assert list(owner.list_datasets()) == []
    blob_dir = running.app.config.blob_dir
    assert [p.name for p in blob_dir.rglob("*") if p.is_file() and p.name != MARKER] == []


def test_declared_column_missing_and_extra(running, owner, tmp_path) -> None:
    rows = [row[:-1] + ["x"] for row in _rows()]
    path = _write_csv(tmp_path / "bad.csv", rows, HEADER[:-1] + ["surprise"])
    error = _expect_error(lambda: owner.upload_dataset(path, _schema()), grpc.StatusCode.INVALID_ARGUMENT)
    fields = {v.field for v in error.violations}
    assert fields == {"columns[outcome]", "columns[surprise]"}
    _nothing_stored(running, owner)


def test_wrong_type_names_column_and_row_not_value(running, owner, tmp_path) -> None:
    rows = _rows()
    rows[5][6] = "CANARY-NOTE-2208"  # a text value in the float column heart_rate
    error = _expect_error(lambda: _upload(owner, tmp_path, rows), grpc.StatusCode.INVALID_ARGUMENT)
    assert [v.field for v in error.violations] == ["columns[heart_rate]"]
    _nothing_stored(running, owner)


def test_empty_file(running, owner, tmp_path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    _expect_error(lambda: owner.upload_dataset(path, _schema()), grpc.StatusCode.INVALID_ARGUMENT)
    _nothing_stored(running, owner)


@pytest.mark.parametrize(
    "planted, kind",
    [("900101-1234567", "resident registration"), ("010-2345-6789", "phone"), ("kim@example.org", "e-mail")],
)
def test_identifiers_in_undeclared_column_reject_upload(running, owner, tmp_path, planted, kind) -> None:
    rows = _rows()
    rows[7][5] = f"called back {planted}"
    error = _expect_error(lambda: _upload(owner, tmp_path, rows), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.reason == "SENSITIVE_DATA_FOUND"
    assert [v.field for v in error.violations] == ["columns[note]"]
    assert kind in error.violations[0].description
    assert planted not in str(error)
    _nothing_stored(running, owner)


def test_invalid_policy_lists_every_problem(running, owner, tmp_path) -> None:
    schema = _schema(patient_id={"role": "feature"}, age={"generalize": {"date": "month"}})
    error = _expect_error(lambda: _upload(owner, tmp_path, schema=schema), grpc.StatusCode.INVALID_ARGUMENT)
    assert len(error.violations) >= 2
    _nothing_stored(running, owner)


def test_upload_past_size_limit_keeps_existing_data(tmp_path) -> None:
    small = start_server(make_config(tmp_path / "state", max_upload_bytes=2000))
    try:
        _, token = small.principal(Role.DATA_OWNER)
        with small.client(token) as client:
            kept = _upload(client, tmp_path, _rows(4, 2) + _rows(4, 2))
            big = _write_csv(tmp_path / "big.csv", _rows(60, 3))
            error = _expect_error(lambda: client.upload_dataset(big, _schema()), grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert error.reason == "UPLOAD_TOO_LARGE"
            assert [d.name for d in client.list_datasets()] == [kept.name]
            assert client.get_dataset(kept.name).row_count == kept.row_count
    finally:
        small.server.stop(grace=0)


def _raw_upload(running, token: str, messages):
    with grpc.insecure_channel(running.address) as channel:
        call = channel.stream_unary(
            "/cleanroom.v1.DatasetService/UploadDataset",
            datasets_pb2.UploadDatasetRequest.SerializeToString,
            datasets_pb2.Dataset.FromString,
        )
        return call(iter(messages), metadata=(("authorization", f"Bearer {token}"),), timeout=30)


def _metadata() -> datasets_pb2.UploadMetadata:
    schema = _schema()
    return datasets_pb2.UploadMetadata(
        display_name="x", format=datasets_pb2.CSV, columns=schema.columns,
        policy=datasets_pb2.DeidentificationPolicy(k_anonymity=2),
    )


def test_stream_without_trailer_stores_nothing(running, owner, tmp_path) -> None:
    data = _write_csv(tmp_path / "u.csv", _rows()).read_bytes()
    _, token = running.principal(Role.DATA_OWNER)
    messages = [datasets_pb2.UploadDatasetRequest(metadata=_metadata()), datasets_pb2.UploadDatasetRequest(chunk=data[:300])]
    with pytest.raises(grpc.RpcError) as err:
        _raw_upload(running, token, messages)
    assert err.value.code() is grpc.StatusCode.ABORTED
    trailer = datasets_pb2.UploadTrailer(size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    messages = [datasets_pb2.UploadDatasetRequest(metadata=_metadata()), datasets_pb2.UploadDatasetRequest(chunk=data[:300]),
                datasets_pb2.UploadDatasetRequest(trailer=trailer)]
    with pytest.raises(grpc.RpcError) as err:
        _raw_upload(running, token, messages)
    assert err.value.code() is grpc.StatusCode.ABORTED
    assert "do not match" in err.value.details()
    _nothing_stored(running, owner)


def _field_violations(error: grpc.RpcError) -> list[str]:
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in rpc_status.from_call(error).details if d.Is(bad.DESCRIPTOR))
    return [v.field for v in bad.field_violations]


@pytest.mark.parametrize(("column", "set_value", "field"), [
    (0, lambda c: setattr(c, "type", 999), "metadata.columns[0].type"),
    (1, lambda c: setattr(c, "type", -1), "metadata.columns[1].type"),
    (5, lambda c: setattr(c, "type", 2**31 - 1), "metadata.columns[5].type"),
    (5, lambda c: setattr(c, "role", 999), "metadata.columns[5].role"),
    (4, lambda c: setattr(c.generalization, "date", 999), "metadata.columns[4].generalization.date"),
])
def test_an_enum_value_the_server_does_not_know_is_invalid_argument(running, owner, tmp_path, column, set_value, field) -> None:
    """proto3 enums are open: a raw client can send any int32 where an enum is declared."""
    data = _write_csv(tmp_path / "u.csv", _rows()).read_bytes()
    _, token = running.principal(Role.DATA_OWNER)
    metadata = _metadata()
    set_value(metadata.columns[column])
    trailer = datasets_pb2.UploadTrailer(size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    messages = [datasets_pb2.UploadDatasetRequest(metadata=metadata), datasets_pb2.UploadDatasetRequest(chunk=data),
                datasets_pb2.UploadDatasetRequest(trailer=trailer)]
    with pytest.raises(grpc.RpcError) as err:
        _raw_upload(running, token, messages)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _field_violations(err.value) == [field]
    _nothing_stored(running, owner)


def test_a_chunk_after_the_trailer_is_refused_and_nothing_stored(running, owner, tmp_path) -> None:
    data = _write_csv(tmp_path / "u.csv", _rows()).read_bytes()
    _, token = running.principal(Role.DATA_OWNER)
    trailer = datasets_pb2.UploadTrailer(size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    messages = [datasets_pb2.UploadDatasetRequest(metadata=_metadata()), datasets_pb2.UploadDatasetRequest(chunk=data),
                datasets_pb2.UploadDatasetRequest(trailer=trailer), datasets_pb2.UploadDatasetRequest(chunk=b"late,row\n")]
    with pytest.raises(grpc.RpcError) as err:
        _raw_upload(running, token, messages)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _field_violations(err.value) == ["trailer"]
    _nothing_stored(running, owner)


def test_cut_off_upload_leaves_nothing(running, owner, tmp_path) -> None:
    data = _write_csv(tmp_path / "u.csv", _rows(200, 20)).read_bytes()
    _, token = running.principal(Role.DATA_OWNER)
    sent_half = threading.Event()

    def messages():
        yield datasets_pb2.UploadDatasetRequest(metadata=_metadata())
        for start in range(0, len(data) // 2, 4096):
            yield datasets_pb2.UploadDatasetRequest(chunk=data[start:start + 4096])
        sent_half.set()
        time.sleep(30)  # the client dies here; the stream never finishes

    with grpc.insecure_channel(running.address) as channel:
        call = channel.stream_unary("/cleanroom.v1.DatasetService/UploadDataset",
                                    datasets_pb2.UploadDatasetRequest.SerializeToString, datasets_pb2.Dataset.FromString)
        future = call.future(messages(), metadata=(("authorization", f"Bearer {token}"),))
        assert sent_half.wait(10)
        time.sleep(0.3)
        future.cancel()
    deadline = time.monotonic() + 10
    blob_dir = running.app.config.blob_dir
    while any(p.is_file() and p.name != MARKER for p in blob_dir.rglob("*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    _nothing_stored(running, owner)
