"""A stream upload through the dataset service (cleanroom.datasets.service) on real SQLite and
PostgreSQL: validation in one error before a byte is read, the stored Dataset and its public stream
description, the wire messages, and the per-hospital time-shift key."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom.crypto.sealed_table import SealedTable
from cleanroom.datasets.upload_stream import Trailer
from cleanroom.domain.datasets import UploadRequest, schema_view
from cleanroom.domain.deid import ColumnRole, ColumnSpec, ColumnType
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.identity import Role
from cleanroom.domain.pagination import PageRequest
from cleanroom.domain.streams import ChannelSpec, StreamDescription, StreamSpec
from cleanroom.server.app import App, build_app
from cleanroom.storage import dataset_repo
from cleanroom.storage.blobs import BlobStore
from cleanroom.v1 import datasets_pb2
from cleanroom.wire.datasets import (
    dataset_to_proto,
    stream_description_from_proto,
    stream_spec_to_proto,
    stream_summary_from_proto,
    upload_request_from_proto,
)
from tests.conftest import make_config
from tests.datasets.test_stream_intake import BASE, COLUMNS, HEADER, SPEC, row

HOUR = 3600


@pytest.fixture
def app(tmp_path: Path, database_url: str) -> Iterator[App]:
    instance = build_app(make_config(tmp_path / "state", database_url=database_url))
    yield instance
    instance.close()


def parts(data: bytes) -> Iterator[bytes | Trailer]:
    yield data
    yield Trailer(len(data), hashlib.sha256(data).hexdigest())


def request(spec: StreamSpec = SPEC, columns: tuple[ColumnSpec, ...] = COLUMNS) -> UploadRequest:
    return UploadRequest("vitals", "a ward's monitors", "csv", columns, 0, 0, stream=spec)


def readings() -> bytes:
    lines = [row(f"p{p}", BASE + s * 60 + p) for s in range(4 * 60 + 1) for p in range(3)]  # four hours each
    return (HEADER + "".join(lines)).encode()


def test_a_stream_upload_stores_its_description_and_report(app: App) -> None:
    owner, _ = app.principals.create("ward owner", Role.DATA_OWNER, actor="test")
    dataset = app.datasets.upload(owner, request(StreamSpec("ts", SPEC.channels, 60, 7)), parts(readings()))
    assert dataset.stream == StreamDescription("ts", (("hr", "bpm"), ("spo2", "%")), 60, 4)
    assert (dataset.row_count, dataset.patient_count) == (3 * 241, 3)
    assert dataset.report.stream is not None and dataset.report.stream.max_shift_days == 7
    again = app.datasets.get(owner, dataset.resource_name)  # read back from the database
    assert again.stream == dataset.stream and again.report == dataset.report
    with app.db.read() as session:
        wrapped = dataset_repo.wrapped_dataset_key(session, dataset.id)
    assert wrapped is not None
    key = app.keys.unwrap_dataset_key(dataset.id, wrapped)
    with BlobStore(app.config.blob_dir).open(dataset.id) as handle, SealedTable(handle, key, dataset.id) as table:
        assert table.rows == dataset.row_count and len(table.spans) == 3
        assert all(span.last_time - span.first_time == 4 * HOUR for span in table.spans)


def test_the_description_is_public_with_the_schema_and_the_report_is_not(app: App) -> None:
    owner, _ = app.principals.create("ward owner", Role.DATA_OWNER, actor="test")
    dataset = app.datasets.upload(owner, request(), parts(readings()))
    public = dataset_to_proto(schema_view(dataset))
    assert stream_description_from_proto(public.stream) == dataset.stream
    assert not public.HasField("intake_report") and public.row_count == 0
    own = dataset_to_proto(dataset)
    assert own.intake_report.stream.readings == dataset.row_count
    assert stream_summary_from_proto(own.intake_report.stream) == dataset.report.stream


def _unread() -> Iterator[bytes | Trailer]:
    raise AssertionError("the file was read before the request was checked")
    yield b""  # a generator: the error comes at the first read


def test_every_violation_of_columns_and_stream_comes_in_one_error_before_a_byte_is_read(app: App) -> None:
    owner, _ = app.principals.create("ward owner", Role.DATA_OWNER, actor="test")
    columns = (*COLUMNS, ColumnSpec("zip", ColumnType.STRING, ColumnRole.QUASI_IDENTIFIER))  # no generalisation either
    spec = StreamSpec("ts", (*SPEC.channels, ChannelSpec("steps", "steps/min")), time_resolution_seconds=0)
    with pytest.raises(CleanroomError) as caught:
        app.datasets.upload(owner, request(spec, columns), _unread())
    assert caught.value.code is ErrorCode.BAD_REQUEST
    fields = {v.field for v in caught.value.violations}
    assert {"columns[zip]", "stream.channels[steps]", "stream.time_resolution_seconds"} <= fields
    assert BlobStore(app.config.blob_dir).list_ids() == []


def test_stream_roles_in_a_table_upload_are_refused(app: App) -> None:
    owner, _ = app.principals.create("ward owner", Role.DATA_OWNER, actor="test")
    with pytest.raises(CleanroomError) as caught:
        app.datasets.upload(owner, request(spec=None), _unread())  # type: ignore[arg-type]
    assert {v.field for v in caught.value.violations} >= {"columns[ts]", "columns[hr_unit]"}


def test_a_refused_stream_file_stores_nothing(app: App) -> None:
    owner, _ = app.principals.create("ward owner", Role.DATA_OWNER, actor="test")
    data = (HEADER + row("p1", BASE + 5) + row("p1", BASE)).encode()
    with pytest.raises(CleanroomError) as caught:
        app.datasets.upload(owner, request(), parts(data))
    assert [v.field for v in caught.value.violations] == ["columns[ts]"]
    assert BlobStore(app.config.blob_dir).list_ids() == [] and app.datasets.list(owner, _page()) == []
    assert not any(p.is_file() for p in (app.config.blob_dir / "tmp").rglob("*"))


def _page() -> PageRequest:
    return PageRequest(size=10, after_id=None)


def test_each_hospital_shifts_with_its_own_key(app: App) -> None:
    first, _ = app.principals.create("ward one", Role.DATA_OWNER, actor="test")
    second, _ = app.principals.create("ward two", Role.DATA_OWNER, actor="test")
    assert app.keys.time_shift_key(first.id) == app.keys.time_shift_key(first.id)
    assert app.keys.time_shift_key(first.id) != app.keys.time_shift_key(second.id)
    assert app.keys.time_shift_key(first.id) != app.keys.pseudonym_key(first.id)


def test_the_upload_metadata_carries_the_stream_and_a_zero_resolution_means_one() -> None:
    metadata = datasets_pb2.UploadMetadata(display_name="v", format=datasets_pb2.CSV,
                                           stream=stream_spec_to_proto(StreamSpec("ts", SPEC.channels, 0, 3)))
    assert upload_request_from_proto(metadata).stream == StreamSpec("ts", SPEC.channels, 1, 3)
    assert upload_request_from_proto(datasets_pb2.UploadMetadata(display_name="v", format=datasets_pb2.CSV)).stream is None
