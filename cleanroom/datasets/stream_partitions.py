"""Temporary partitions of a stream upload's de-identified readings, and reading them back within a
memory budget (cleanroom/datasets/stream_intake.py drives both passes).

Pass one writes each reading to one of P partitions by a hash of its patient's pseudonym, so all of
a patient's readings land in one partition, in arrival order (which is time order: intake checked
it). Each partition is an Arrow IPC stream sealed under a key that lives only in memory.

Pass two reads a partition whole when it fits `hold_bytes`. One that does not (patients hashed
unevenly, or a declared size below the truth) is read in groups of whole patients that fit, one
scan of the partition per group; a patient who alone outgrows the budget comes back a piece at a
time, in time order (stream_cells.Cells.pieces joins the pieces). Counting rows per patient costs a
dict entry per patient, never per reading.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from cleanroom import crypto
from cleanroom.storage.blobs import BlobStore, PendingBlob

PARTITION_CHUNK = 1 << 18  # a small sealed chunk: P partitions each buffer one


@dataclass(frozen=True)
class Piece:
    """Rows pass two handles at once: whole patients (`patient` empty), or a piece of one patient's
    readings (`last`: the patient's final piece)."""

    table: pa.Table
    patient: str = ""
    last: bool = True


@dataclass
class _Partition:
    blob: PendingBlob
    sealed: crypto.SealedWriter
    writer: ipc.RecordBatchStreamWriter
    schema: pa.Schema
    patients: set[str] = field(default_factory=set)


@dataclass
class Partitions:
    blobs: BlobStore
    dataset_id: str
    count: int
    patient_column: str
    temporaries: ExitStack
    key: bytes = field(default_factory=crypto.new_data_key)
    written: dict[int, _Partition] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # readings per patient

    def write(self, batch: pa.RecordBatch, patients: pa.DictionaryArray) -> None:
        """`batch` in stream_checks.partition_schema; `patients` its patient column."""
        if batch.num_rows == 0:
            return
        names = patients.dictionary.to_pylist()
        indices = patients.indices.to_numpy(zero_copy_only=False)
        for name, rows in zip(names, np.bincount(indices, minlength=len(names)).tolist(), strict=True):
            self.rows[name] += rows
        per_patient = np.array([int(name[:8], 16) % self.count for name in names], dtype=np.int64)
        ids = per_patient[indices]
        order = np.argsort(ids, kind="stable")  # arrival order kept within each patient
        grouped = batch.take(pa.array(order))
        present, starts = np.unique(ids[order], return_index=True)
        ends = np.r_[starts[1:], len(order)]
        for number, start, end in zip(present.tolist(), starts.tolist(), ends.tolist(), strict=True):
            self._partition(number, grouped.schema).writer.write_batch(grouped.slice(start, end - start))
        for name, number in zip(names, per_patient.tolist(), strict=True):
            if number in self.written:
                self.written[number].patients.add(name)

    def _partition(self, number: int, schema: pa.Schema) -> _Partition:
        if number not in self.written:
            blob = self.temporaries.enter_context(self.blobs.create(f"{self.dataset_id}-part{number}"))
            sealed = crypto.SealedWriter(blob.file, self.key, blob.blob_id, PARTITION_CHUNK, digest=False)
            self.written[number] = _Partition(blob, sealed, ipc.new_stream(sealed, schema), schema)
        return self.written[number]

    def close_writers(self) -> None:
        for partition in self.written.values():
            partition.writer.close()
            partition.sealed.close()
            partition.blob.file.flush()

    def read_back(self, hold_bytes: int) -> Iterator[Piece]:
        """Every partition's readings within `hold_bytes` of Arrow IPC at a time; a partition's
        blob goes once it is read."""
        for number in sorted(self.written):
            partition = self.written.pop(number)
            size = os.path.getsize(partition.blob.path)
            if size <= hold_bytes:
                yield Piece(pa.Table.from_batches(list(self._batches(partition)), schema=partition.schema))
            else:
                total = sum(self.rows[p] for p in partition.patients)
                yield from self._grouped(partition, max(1, hold_bytes * total // size))
            partition.blob.abort()

    def _grouped(self, partition: _Partition, budget_rows: int) -> Iterator[Piece]:
        groups, alone = _groups(sorted(partition.patients), self.rows, budget_rows)
        for group in groups:
            yield Piece(pa.Table.from_batches(list(self._batches(partition, group)), schema=partition.schema))
        for patient in alone:
            yield from self._pieces(partition, patient, budget_rows)

    def _pieces(self, partition: _Partition, patient: str, budget_rows: int) -> Iterator[Piece]:
        pending: list[pa.RecordBatch] = []
        held = 0
        for batch in self._batches(partition, [patient]):
            while batch.num_rows:
                part, batch = batch.slice(0, budget_rows - held), batch.slice(budget_rows - held)
                pending.append(part)
                held += part.num_rows
                if held == budget_rows:
                    yield Piece(pa.Table.from_batches(pending), patient, last=False)
                    pending, held = [], 0
        yield Piece(pa.Table.from_batches(pending, schema=partition.schema), patient, last=True)

    def _batches(self, partition: _Partition, patients: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The partition's batches in written order; with `patients`, only their rows."""
        wanted = pa.array(patients, pa.string()) if patients is not None else None
        with open(partition.blob.path, "rb") as handle:
            reader = ipc.open_stream(crypto.as_arrow_file(crypto.SealedReader(handle, self.key, partition.blob.blob_id)))
            for batch in reader:
                if wanted is None:
                    yield batch
                    continue
                column = batch.column(self.patient_column)
                rows = pc.is_in(column.dictionary, value_set=wanted).take(column.indices)
                if pc.any(rows).as_py():
                    yield batch.filter(rows)


def _groups(patients: list[str], rows: dict[str, int], budget_rows: int) -> tuple[list[list[str]], list[str]]:
    """Patients in groups of at most `budget_rows` readings, and those who alone hold more."""
    groups: list[list[str]] = [[]]
    alone, held = [], 0
    for patient in patients:
        if rows[patient] > budget_rows:
            alone.append(patient)
            continue
        if held + rows[patient] > budget_rows:
            groups.append([])
            held = 0
        groups[-1].append(patient)
        held += rows[patient]
    return [g for g in groups if g], alone
