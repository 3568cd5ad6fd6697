"""Dataset intake: parse, de-identify, check k-anonymity and seal, in bounded memory.

Two passes over the data, both encrypted:
1. parse the upload batch by batch, reject files holding undeclared identifiers, de-identify each
   batch, count k-anonymity classes, and write the batches to a staging blob sealed under a key
   that lives only in memory;
2. read the staging blob back, drop the classes below k, and seal the result under the dataset's
   own key.
Peak memory is a few batches plus the class counts (distinct class x patient pairs), never the
file. Plaintext never touches disk: the staging blobs are ciphertext too, and are removed at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from cleanroom import crypto
from cleanroom.datasets import deidentify as ops
from cleanroom.datasets.upload_stream import UploadStream
from cleanroom.domain import deid
from cleanroom.domain.datasets import IntakeReport
from cleanroom.domain.errors import CleanroomError, ErrorCode, bad_request
from cleanroom.storage.blobs import BlobStore, PendingBlob

CSV = "csv"
PARQUET = "parquet"


@dataclass
class IntakeResult:
    report: IntakeReport
    patient_count: int
    ciphertext_sha256: str
    blob: PendingBlob  # sealed under the dataset key; the caller commits it with the metadata row


@dataclass
class _Counts:
    rows_received: int = 0
    rows_without_patient_key: int = 0
    rows_stored: int = 0
    rows_suppressed: int = 0
    patients: set[str] = field(default_factory=set)


def ingest(
    stream: UploadStream,
    *,
    file_format: str,
    policy: deid.DeidPolicy,
    pseudonymizer: ops.Pseudonymizer,
    blobs: BlobStore,
    dataset_id: str,
    data_key: bytes,
) -> IntakeResult:
    counts = _Counts()
    counter = ops.EquivalenceClassCounter(policy)
    with ExitStack() as temporaries:
        batches = _parse(stream, file_format, policy, blobs, dataset_id, temporaries)
        staged = temporaries.enter_context(blobs.create(f"{dataset_id}-stage"))
        stage_key = crypto.new_data_key()
        try:
            _first_pass(batches, policy, pseudonymizer, counter, counts, staged, stage_key)
        except CleanroomError as error:
            raise stream.explain(error) from None
        stream.verify_trailer()
        small = counter.small_classes(policy.k)
        final = blobs.create(dataset_id)
        try:
            digest = _second_pass(staged, stage_key, small, counts, final, data_key, dataset_id, policy)
        except BaseException:
            final.abort()
            raise
    report = _report(policy, stream.bytes_received, counts, counter, small)
    return IntakeResult(report, len(counts.patients), digest, final)


def _parse(
    stream: UploadStream,
    file_format: str,
    policy: deid.DeidPolicy,
    blobs: BlobStore,
    dataset_id: str,
    temporaries: ExitStack,
) -> Iterator[pa.RecordBatch]:
    if file_format == CSV:
        return ops.read_csv_batches(stream, policy)
    if file_format == PARQUET:
        return ops.read_parquet_batches(_stage_raw(stream, blobs, dataset_id, temporaries), policy)
    raise bad_request("format must be CSV or PARQUET")


def _stage_raw(stream: UploadStream, blobs: BlobStore, dataset_id: str, temporaries: ExitStack) -> object:
    """Parquet needs random access (its footer comes last): seal the raw file, then read it back."""
    raw = temporaries.enter_context(blobs.create(f"{dataset_id}-raw"))
    key = crypto.new_data_key()
    writer = crypto.SealedWriter(raw.file, key, raw.blob_id)
    while chunk := stream.read(crypto.CHUNK_SIZE):
        writer.write(chunk)
    writer.close()
    raw.file.flush()
    reader = crypto.SealedReader(temporaries.enter_context(open(raw.path, "rb")), key, raw.blob_id)
    return crypto.as_arrow_file(reader)


def _first_pass(
    batches: Iterator[pa.RecordBatch],
    policy: deid.DeidPolicy,
    pseudonymizer: ops.Pseudonymizer,
    counter: ops.EquivalenceClassCounter,
    counts: _Counts,
    staged: PendingBlob,
    stage_key: bytes,
) -> None:
    sink = crypto.SealedWriter(staged.file, stage_key, staged.blob_id)
    with ipc.new_stream(sink, ops.stored_arrow_schema(policy)) as writer:
        for batch in batches:
            violations = ops.scan_for_identifiers(batch, policy)
            if violations:
                raise CleanroomError(
                    ErrorCode.SENSITIVE_DATA_FOUND,
                    "the file holds direct identifiers in columns not declared DIRECT_IDENTIFIER; nothing was stored",
                    violations=violations,
                )
            counts.rows_received += batch.num_rows
            result = ops.deidentify_batch(batch, policy, pseudonymizer)
            counts.rows_without_patient_key += result.rows_without_patient_key
            counter.update(result.batch)
            writer.write_batch(result.batch)
    sink.close()
    staged.file.flush()


def _second_pass(
    staged: PendingBlob,
    stage_key: bytes,
    small: object,
    counts: _Counts,
    final: PendingBlob,
    data_key: bytes,
    dataset_id: str,
    policy: deid.DeidPolicy,
) -> str:
    patient_column = policy.patient_key.name
    sink = crypto.SealedWriter(final.file, data_key, dataset_id)
    with open(staged.path, "rb") as staged_file:
        source = crypto.SealedReader(staged_file, stage_key, staged.blob_id)
        with ipc.open_stream(crypto.as_arrow_file(source)) as reader, ipc.new_stream(sink, reader.schema) as writer:
            for batch in reader:
                kept, removed = ops.suppress_small_classes(batch, small)
                counts.rows_suppressed += removed
                counts.rows_stored += kept.num_rows
                counts.patients.update(pc.unique(kept.column(patient_column)).to_pylist())
                writer.write_batch(kept)
    sink.close()
    final.file.flush()
    return sink.ciphertext_sha256


def _report(
    policy: deid.DeidPolicy,
    bytes_received: int,
    counts: _Counts,
    counter: ops.EquivalenceClassCounter,
    small: object,
) -> IntakeReport:
    columns = policy.columns
    notes = []
    if counts.rows_stored == 0:
        notes.append("no rows remain after de-identification; the dataset is stored empty")
    return IntakeReport(
        bytes_received=bytes_received,
        rows_received=counts.rows_received,
        rows_stored=counts.rows_stored,
        rows_without_patient_key=counts.rows_without_patient_key,
        k_anonymity=policy.k,
        equivalence_classes=counter.class_count(),
        classes_suppressed=len(small),  # type: ignore[arg-type]
        rows_suppressed=counts.rows_suppressed,
        dropped_columns=tuple(c.name for c in columns if c.role is deid.ColumnRole.DIRECT_IDENTIFIER),
        pseudonymized_columns=tuple(c.name for c in columns if c.role is deid.ColumnRole.PATIENT_KEY),
        generalized_columns=tuple(
            (c.name, c.generalization.describe()) for c in columns if c.generalization is not None
        ),
        notes=tuple(notes),
    )
