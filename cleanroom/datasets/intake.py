"""Dataset intake: parse, de-identify, check k-anonymity and seal, in bounded memory.

Two passes over the data, both encrypted:
1. parse the upload batch by batch, reject files holding undeclared identifiers, de-identify each
   batch, count k-anonymity classes, and write the batches to a staging blob sealed under a key
   that lives only in memory;
2. read the staging blob back, drop the classes below k, and seal the result under the dataset's
   own key.
Peak memory is a few batches plus the class counts (distinct class x patient pairs), never the
file. Plaintext never touches disk: the staging blobs are ciphertext too, and are removed at the end.
Helper threads read ahead (receive and parse, convert types; in the second pass, decrypt) while
the caller's thread de-identifies and seals: pyarrow, hashlib and the ciphers release the GIL, so
the stages run on all cores.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass
from typing import TypeVar

import pyarrow as pa
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
# De-identifying a batch costs dozens of Arrow calls whatever its size, so small batches (one per
# 1 MiB CSV block; pyarrow's CSV reader holds ~40 blocks, so bigger blocks cost memory) are joined
# into batches of about this many bytes first.
BATCH_BYTES = 8 << 20
READ_AHEAD = 2  # batches a helper thread may have ready
RAW_READ_AHEAD = 8  # raw CSV batches (one per 1 MiB block) the parsing thread may have ready
# Staged batches carry each row's class id as a last column, so the second pass need not
# rebuild the class keys.
_STAGED_CLASS = pa.field("class_id", pa.int32())
T = TypeVar("T")


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
    return IntakeResult(report, counter.patients_outside(small), digest, final)


def _parse(
    stream: UploadStream,
    file_format: str,
    policy: deid.DeidPolicy,
    blobs: BlobStore,
    dataset_id: str,
    temporaries: ExitStack,
) -> Iterator[pa.RecordBatch]:
    """The upload's typed batches, produced ahead on helper threads (close the iterator)."""
    if file_format == CSV:
        return _csv_batches(stream, policy)
    if file_format == PARQUET:
        parquet = _stage_raw(stream, blobs, dataset_id, temporaries)
        return _read_ahead(_coalesced(ops.read_parquet_batches(parquet, policy)))
    raise bad_request("format must be CSV or PARQUET")


def _csv_batches(stream: UploadStream, policy: deid.DeidPolicy) -> Iterator[pa.RecordBatch]:
    # Two helper threads: one receives and parses, one converts types (as costly as parsing);
    # on one thread they were the slowest stage of the pipeline.
    with closing(_read_ahead(ops.raw_csv_batches(stream, policy), RAW_READ_AHEAD)) as raw, \
            closing(_read_ahead(_coalesced(ops.typed_csv_batches(raw, policy)))) as typed:
        yield from typed


def _stage_raw(stream: UploadStream, blobs: BlobStore, dataset_id: str, temporaries: ExitStack) -> object:
    """Parquet needs random access (its footer comes last): seal the raw file, then read it back."""
    raw = temporaries.enter_context(blobs.create(f"{dataset_id}-raw"))
    key = crypto.new_data_key()
    writer = crypto.SealedWriter(raw.file, key, raw.blob_id, digest=False)
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
    # Nobody reads the staging blob's digest, and it would cost as much as its encryption.
    sink = crypto.SealedWriter(staged.file, stage_key, staged.blob_id, digest=False)
    with ipc.new_stream(sink, ops.stored_arrow_schema(policy).append(_STAGED_CLASS)) as writer, \
            closing(batches):  # stops the helper threads, also when a batch is refused
        for batch in batches:
            violations = ops.scan_for_identifiers(batch, policy)
            if violations:
                raise CleanroomError(
                    ErrorCode.SENSITIVE_DATA_FOUND,
                    "the file holds direct identifiers in columns not declared DIRECT_IDENTIFIER; nothing was stored",
                    violations=violations,
                )
            first_row = counts.rows_received + 1
            counts.rows_received += batch.num_rows
            result = ops.deidentify_batch(batch, policy, pseudonymizer, first_row=first_row)
            counts.rows_without_patient_key += result.rows_without_patient_key
            class_ids = counter.update(result.batch)
            writer.write_batch(result.batch.append_column(_STAGED_CLASS, class_ids))
    sink.close()
    staged.file.flush()


def _second_pass(
    staged: PendingBlob,
    stage_key: bytes,
    small: ops.SmallClasses,
    counts: _Counts,
    final: PendingBlob,
    data_key: bytes,
    dataset_id: str,
    policy: deid.DeidPolicy,
) -> str:
    schema = ops.stored_arrow_schema(policy)
    sink = crypto.SealedWriter(final.file, data_key, dataset_id)
    with open(staged.path, "rb") as staged_file:
        source = crypto.SealedReader(staged_file, stage_key, staged.blob_id)
        with ipc.open_stream(crypto.as_arrow_file(source)) as reader, ipc.new_stream(sink, schema) as writer, \
                closing(_read_ahead(iter(reader))) as ahead:
            for staged_batch in ahead:
                batch = pa.RecordBatch.from_arrays(staged_batch.columns[:-1], schema=schema)
                kept, removed = ops.suppress_small_classes(batch, small, staged_batch.column(-1))
                counts.rows_suppressed += removed
                counts.rows_stored += kept.num_rows
                writer.write_batch(kept)
    sink.close()
    final.file.flush()
    return sink.ciphertext_sha256


def _coalesced(batches: Iterator[pa.RecordBatch], min_bytes: int = BATCH_BYTES) -> Iterator[pa.RecordBatch]:
    """Joins consecutive batches until each holds at least `min_bytes` (the last may hold less)."""
    pending: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        pending.append(batch)
        size += batch.nbytes
        if size >= min_bytes:
            yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
            pending, size = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)


_END = object()


def _read_ahead(items: Iterator[T], depth: int = READ_AHEAD) -> Iterator[T]:
    """Produces `items` on a helper thread, at most `depth` ahead of the consumer.

    An error on the helper thread is raised in the consumer's. Close the generator (closing())
    when the consumer may stop early: that stops the helper and waits for it, so nothing reads
    the source any more once it returns.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                ready.put((item, None))
            ready.put((_END, None))
        except BaseException as error:  # handed to the consumer, raised there
            ready.put((_END, error))

    helper = threading.Thread(target=produce, name="intake-read-ahead", daemon=True)
    helper.start()
    try:
        while (entry := ready.get())[0] is not _END:
            yield entry[0]
        if entry[1] is not None:
            raise entry[1]
    finally:
        stop.set()
        while helper.is_alive():  # a helper blocked on a full queue needs room to see `stop`
            try:
                ready.get(timeout=0.05)
            except queue.Empty:
                pass
        helper.join()


def _report(
    policy: deid.DeidPolicy,
    bytes_received: int,
    counts: _Counts,
    counter: ops.EquivalenceClassCounter,
    small: ops.SmallClasses,
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
        classes_suppressed=len(small),
        rows_suppressed=counts.rows_suppressed,
        dropped_columns=tuple(c.name for c in columns if c.role is deid.ColumnRole.DIRECT_IDENTIFIER),
        pseudonymized_columns=tuple(c.name for c in columns if c.role is deid.ColumnRole.PATIENT_KEY),
        generalized_columns=tuple(
            (c.name, c.generalization.describe()) for c in columns if c.generalization is not None
        ),
        notes=tuple(notes),
    )
