"""Sealed stream tables: a stream dataset's readings, sealed, and readable one patient's span at a time.

A stream dataset is stored as one sealed blob (the chunked AES-GCM format of sealed.py) whose
plaintext is:

    [an Arrow IPC *file* of the readings][an Arrow IPC *stream* of the index][trailer]

The readings are ordered by patient, then by time (strictly increasing within a patient), and every
record batch holds rows of exactly one patient, at most `BATCH_ROWS` of them, so a patient's span is
a run of consecutive batches. The patient column is not repeated in the stored batches (at 1 Hz the
pseudonym would be most of each row): the index names each batch's patient, and the reader puts the
column back, in its place, into whatever it returns. The index has one row per batch, in batch order: the patient's
pseudonym, the batch's first and last time and its row count. The trailer is
`>QQ8s`: where the index starts, its length, and a magic string. A reader decrypts the trailer and
the index (small), then only the chunks under the batches it asks for: one patient's span costs
that span plus at most two sealed chunks, never the whole dataset. The index holds pseudonyms, so it
is sealed with the readings, under the same key.
"""

from __future__ import annotations

import bisect
import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.ipc as ipc

from cleanroom.crypto.sealed import SealedReader, SealedWriter, as_arrow_file
from cleanroom.domain.errors import IntegrityError

FORMAT = "sealed-arrow-table/v1"
BATCH_ROWS = 2048  # rows per record batch: 34 minutes of 1 Hz readings, ~40 KB of three channels
CHUNK_SIZE = 1 << 16  # sealed chunk size of stream blobs: a short span decrypts little beyond itself
_TRAILER = struct.Struct(">QQ8s")
_MAGIC = b"CRSTRM1\n"
INDEX_SCHEMA = pa.schema([
    pa.field("patient", pa.string(), nullable=False),
    pa.field("first_time", pa.int64(), nullable=False),
    pa.field("last_time", pa.int64(), nullable=False),
    pa.field("rows", pa.int64(), nullable=False),
])


class _Counting(io.RawIOBase):
    """Counts what passes to the sealed writer, so the trailer knows where the index starts."""

    def __init__(self, sink: SealedWriter) -> None:
        super().__init__()
        self._sink = sink
        self.position = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def write(self, b: Any) -> int:
        n = self._sink.write(b)
        self.position += n
        return n


class SealedTableWriter:
    """Writes a sealed stream table: call write_patient() once per patient, then close().

    The caller gives each patient's rows together, time strictly increasing (intake checked that);
    this writer cuts them into batches and keeps the index. Leaving a `with` block on an exception
    aborts: the blob stays unreadable, as with SealedWriter."""

    def __init__(self, fileobj: BinaryIO, data_key: bytes, blob_id: str, schema: pa.Schema, *,
                 patient_column: str, time_column: str, chunk_size: int = CHUNK_SIZE, digest: bool = False) -> None:
        self._sealed = SealedWriter(fileobj, data_key, blob_id, chunk_size, digest=digest)
        self._out = _Counting(self._sealed)
        self.schema = stream_schema(schema, patient_column=patient_column, time_column=time_column)
        self._stored = self.schema.remove(self.schema.get_field_index(patient_column))
        self._writer = ipc.new_file(self._out, self._stored)
        self._patient, self._time = patient_column, time_column
        self._index: dict[str, list[Any]] = {name: [] for name in INDEX_SCHEMA.names}
        self.rows = 0

    @property
    def ciphertext_sha256(self) -> str:
        return self._sealed.ciphertext_sha256

    def write_patient(self, rows: pa.Table | pa.RecordBatch) -> None:
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows])
        if table.num_rows == 0:
            return
        patient = table.column(self._patient)[0].as_py()
        stored = table.cast(self.schema).drop_columns([self._patient]).cast(self._stored)
        for batch in stored.combine_chunks().to_batches(max_chunksize=BATCH_ROWS):
            times = batch.column(self._time)
            self._writer.write_batch(batch)
            for name, value in (("patient", patient), ("first_time", times[0].as_py()),
                                ("last_time", times[-1].as_py()), ("rows", batch.num_rows)):
                self._index[name].append(value)
            self.rows += batch.num_rows

    def close(self) -> None:
        self._writer.close()
        index_start = self._out.position
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, INDEX_SCHEMA) as index_writer:
            index_writer.write_table(pa.table(self._index, schema=INDEX_SCHEMA))
        index = sink.getvalue()
        self._out.write(index)
        self._out.write(_TRAILER.pack(index_start, index.size, _MAGIC))
        self._sealed.close()

    def abort(self) -> None:
        self._sealed.abort()

    def __enter__(self) -> SealedTableWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.abort() if exc_type is not None else self.close()


@dataclass(frozen=True)
class PatientSpan:
    """Where one patient's rows are: batches [first_batch, end_batch), their times and row count."""

    patient: str
    first_batch: int
    end_batch: int
    first_time: int
    last_time: int
    rows: int


class SealedTable:
    """Random access to a sealed stream table. Not thread-safe (one SealedReader underneath)."""

    def __init__(self, fileobj: BinaryIO, data_key: bytes, blob_id: str) -> None:
        self._reader = SealedReader(fileobj, data_key, blob_id)
        size = self._reader.size()
        if size < _TRAILER.size:
            raise IntegrityError()
        self._reader.seek(size - _TRAILER.size)
        index_start, index_len, magic = _TRAILER.unpack(self._reader.read(_TRAILER.size))
        if magic != _MAGIC or index_start + index_len + _TRAILER.size != size:
            raise IntegrityError()
        self._reader.seek(index_start)
        self.index: pa.Table = ipc.open_stream(pa.py_buffer(self._reader.read(index_len))).read_all()
        self._file = ipc.open_file(as_arrow_file(self._reader), footer_offset=index_start)
        if self._file.num_record_batches != self.index.num_rows:
            raise IntegrityError()
        self._stored: pa.Schema = self._file.schema
        self.schema: pa.Schema = _with_patient(self._stored)
        self._patients: list[str] = self.index.column("patient").to_pylist()
        self.spans: list[PatientSpan] = _spans(self.index)
        self._by_patient = {span.patient: span for span in self.spans}
        self._first_times: list[int] = self.index.column("first_time").to_pylist()

    @property
    def rows(self) -> int:
        return sum(span.rows for span in self.spans)

    def span(self, patient: str) -> PatientSpan | None:
        return self._by_patient.get(patient)

    def batch(self, number: int) -> pa.RecordBatch:
        """One stored batch, its patient column put back."""
        stored = self._file.get_batch(number)
        position = self.schema.get_field_index(self._patient_column())
        patient = pa.repeat(pa.scalar(self._patients[number], pa.string()), stored.num_rows)
        columns = list(stored.columns)
        columns.insert(position, patient)
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def read_span(self, patient: str, start: int | None = None, end: int | None = None) -> pa.Table:
        """The patient's rows with start <= time <= end (either bound None: open), decrypting only
        the batches that can hold them."""
        span = self._by_patient.get(patient)
        if span is None:
            return self.schema.empty_table()
        lo, hi = span.first_batch, span.end_batch
        if start is not None:  # the last batch starting at or before `start` may still hold it
            lo = max(lo, bisect.bisect_right(self._first_times, start, lo, hi) - 1)
        if end is not None:
            hi = bisect.bisect_right(self._first_times, end, lo, hi)
        table = pa.Table.from_batches([self.batch(i) for i in range(lo, hi)], schema=self.schema)
        return _between(table, self._time_column(), start, end)

    def iter_patients(self) -> Iterator[tuple[str, pa.Table]]:
        """Every patient's rows in stored order, one patient in memory at a time."""
        for span in self.spans:
            yield span.patient, pa.Table.from_batches(
                [self.batch(i) for i in range(span.first_batch, span.end_batch)], schema=self.schema)

    def _patient_column(self) -> str:
        return str((self.schema.metadata or {})[b"patient_column"].decode())

    def _time_column(self) -> str:
        return str((self.schema.metadata or {}).get(b"time_column", b"time").decode())

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> SealedTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream_schema(schema: pa.Schema, *, patient_column: str, time_column: str) -> pa.Schema:
    """The stored schema with the columns the reader needs named in its metadata."""
    return schema.with_metadata({b"format": FORMAT.encode(), b"patient_column": patient_column.encode(),
                                 b"patient_position": str(schema.get_field_index(patient_column)).encode(),
                                 b"patient_nullable": b"1" if schema.field(patient_column).nullable else b"0",
                                 b"time_column": time_column.encode()})


def _with_patient(stored: pa.Schema) -> pa.Schema:
    """The table's schema: the stored one with the patient column back at its declared position."""
    metadata = stored.metadata or {}
    if b"patient_column" not in metadata or b"patient_position" not in metadata:
        raise IntegrityError()
    field = pa.field(metadata[b"patient_column"].decode(), pa.string(), nullable=metadata.get(b"patient_nullable") != b"0")
    return stored.insert(int(metadata[b"patient_position"]), field)


def _spans(index: pa.Table) -> list[PatientSpan]:
    patients = index.column("patient").to_pylist()
    firsts, lasts = index.column("first_time").to_pylist(), index.column("last_time").to_pylist()
    counts = index.column("rows").to_pylist()
    spans: list[PatientSpan] = []
    start = 0
    for i in range(1, len(patients) + 1):
        if i == len(patients) or patients[i] != patients[start]:
            spans.append(PatientSpan(patients[start], start, i, firsts[start], lasts[i - 1], sum(counts[start:i])))
            start = i
    if len({s.patient for s in spans}) != len(spans):
        raise IntegrityError()  # a patient's batches must be consecutive
    return spans


def _between(table: pa.Table, time_column: str, start: int | None, end: int | None) -> pa.Table:
    if start is None and end is None:
        return table
    import numpy as np

    times = table.column(time_column).to_numpy()
    lo = 0 if start is None else int(np.searchsorted(times, start, side="left"))
    hi = len(times) if end is None else int(np.searchsorted(times, end, side="right"))
    return table.slice(lo, hi - lo)
