"""Dataset intake: parse, de-identify, check k-anonymity and seal, in bounded memory.

One pass over the upload, and a second over the sealed result only when it is needed:
1. parse the upload batch by batch, reject files holding undeclared identifiers, de-identify each
   batch, count k-anonymity classes (distinct patients), and seal the batches under the dataset's
   own key (a candidate blob, still uncommitted) while each row's class id goes to a small side
   blob sealed under a key that lives only in memory;
2. only if some class has fewer than k patients: read the candidate and the class ids back, drop
   those classes' rows, and seal the result as a new blob under the dataset's key.
Peak memory is a few batches plus the class counts (distinct class x patient pairs), never the
file. Plaintext never touches disk: the candidate and the side blob are ciphertext, and whatever
is not kept is removed at the end (or on any error). The dataset key is in memory only until the
caller commits the blob with the metadata row, so until then the candidate is as unreadable as a
staging blob.
Helper threads read ahead (receive and cut the CSV into blocks; parse each block straight into
the declared types; scan and de-identify; in the second pass, decrypt) while the caller's thread
counts classes and seals: pyarrow, hashlib and the ciphers release the GIL, so the stages run on
all cores.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Generator, Iterator
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
# De-identifying a batch costs dozens of Arrow calls whatever its size, so CSV is cut into blocks
# of this many bytes, and smaller batches (Parquet's) are joined to about this size first.
BATCH_BYTES = 8 << 20
READ_AHEAD = 2  # batches (or CSV blocks) a helper thread may have ready
# Each row's class id, kept beside the candidate so a second pass need not rebuild class keys.
_CLASS_SCHEMA = pa.schema([pa.field("class_id", pa.int32())])
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
    rows_without_linkage_id: int = 0  # kept rows stored unlinked
    rows_kept: int = 0  # after de-identification, before suppression
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
    linkage: ops.LinkagePseudonymizer | None = None,
) -> IntakeResult:
    """`linkage` derives the platform-wide linkage pseudonyms: required when the policy declares
    a linkage column (the identifier itself is dropped once they are derived)."""
    if policy.linkage is not None and linkage is None:
        raise ValueError("the policy declares a linkage column: pass the linkage pseudonymizer")
    counts = _Counts()
    counter = ops.EquivalenceClassCounter(policy)
    candidate = blobs.create(dataset_id)
    final: PendingBlob | None = None
    try:
        with ExitStack() as temporaries:
            batches = _parse(stream, file_format, policy, blobs, dataset_id, temporaries)
            class_ids = temporaries.enter_context(blobs.create(f"{dataset_id}-classes"))
            ids_key = crypto.new_data_key()
            try:
                deidentified = _deidentified(batches, policy, _Pseudonymizers(pseudonymizer, linkage), counts)
                _first_pass(batches, deidentified, policy, counter, counts, candidate, data_key, class_ids, ids_key)
            except CleanroomError as error:
                raise stream.explain(error) from None
            stream.verify_trailer()
            small = counter.small_classes(policy.k)
            if len(small) == 0:  # nothing to suppress: the candidate is the dataset
                counts.rows_stored = counts.rows_kept
                final, digest = candidate, _file_sha256(candidate)
            else:
                final = blobs.create(dataset_id)
                digest = _second_pass(candidate, data_key, class_ids, ids_key, small, counts, final, policy)
        report = _report(policy, stream.bytes_received, counts, counter, small)
        patients = counter.patients_outside(small)
    except BaseException:
        if final is not None:
            final.abort()
        candidate.abort()
        raise
    if final is not candidate:
        candidate.abort()
    return IntakeResult(report, patients, digest, final)


def _parse(
    stream: UploadStream,
    file_format: str,
    policy: deid.DeidPolicy,
    blobs: BlobStore,
    dataset_id: str,
    temporaries: ExitStack,
) -> Generator[pa.RecordBatch]:
    """The upload's typed batches, produced ahead on helper threads (close the iterator)."""
    if file_format == CSV:
        return _csv_batches(stream, policy)
    if file_format == PARQUET:
        parquet = _stage_raw(stream, blobs, dataset_id, temporaries)
        return _read_ahead(_coalesced(ops.read_parquet_batches(parquet, policy)))
    raise bad_request("format must be CSV or PARQUET")


def _csv_batches(stream: UploadStream, policy: deid.DeidPolicy) -> Generator[pa.RecordBatch]:
    # Two helper threads: one receives the upload and cuts it into blocks of whole lines (this
    # also hashes it), one parses each block into typed columns (the costliest stage).
    layout, blocks = ops.csv_blocks(stream, policy, block_size=BATCH_BYTES)
    with closing(_read_ahead(blocks)) as cut, \
            closing(_read_ahead(ops.parse_csv_blocks(layout, cut, policy))) as typed:
        yield from typed


def _stage_raw(stream: UploadStream, blobs: BlobStore, dataset_id: str, temporaries: ExitStack) -> pa.NativeFile:
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
    batches: Generator[pa.RecordBatch],
    deidentified: Iterator[ops.DeidBatchResult],
    policy: deid.DeidPolicy,
    counter: ops.EquivalenceClassCounter,
    counts: _Counts,
    candidate: PendingBlob,
    data_key: bytes,
    class_ids: PendingBlob,
    ids_key: bytes,
) -> None:
    # No digests while writing: the candidate's is taken afterwards only if it is kept (a second
    # pass writes another blob), and nobody reads the class ids'.
    sink = crypto.SealedWriter(candidate.file, data_key, candidate.blob_id, digest=False)
    ids_sink = crypto.SealedWriter(class_ids.file, ids_key, class_ids.blob_id, digest=False)
    # Closed in reverse order: the de-identifying thread stops first, then the parsing threads.
    with ipc.new_stream(sink, ops.stored_arrow_schema(policy)) as writer, \
            ipc.new_stream(ids_sink, _CLASS_SCHEMA) as ids_writer, \
            closing(batches), \
            closing(_read_ahead(deidentified)) as results:
        for result in results:
            counts.rows_kept += result.batch.num_rows
            ids = counter.update(result.batch, result.patients)
            writer.write_batch(result.batch)
            ids_writer.write_batch(pa.RecordBatch.from_arrays([ids], schema=_CLASS_SCHEMA))
    sink.close()
    ids_sink.close()
    candidate.file.flush()
    class_ids.file.flush()


@dataclass(frozen=True)
class _Pseudonymizers:
    patients: ops.Pseudonymizer  # this hospital's own key
    linkage: ops.LinkagePseudonymizer | None  # the platform-wide key; None: no linkage column


def _deidentified(
    batches: Iterator[pa.RecordBatch],
    policy: deid.DeidPolicy,
    keys: _Pseudonymizers,
    counts: _Counts,
) -> Iterator[ops.DeidBatchResult]:
    """Scans and de-identifies each batch (on a helper thread of its own: the caller's thread,
    counting and sealing, was the pipeline's slowest stage with this work on it too), and checks
    that each patient carries one linkage identifier throughout the upload."""
    link = policy.linkage
    checker = ops.LinkageChecker(link.name) if link is not None else None
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
        result = ops.deidentify_batch(batch, policy, keys.patients, first_row=first_row, linkage=keys.linkage)
        counts.rows_without_patient_key += result.rows_without_patient_key
        counts.rows_without_linkage_id += result.rows_without_linkage_id
        if checker is not None and link is not None:
            stored = result.batch
            checker.update(stored.column(policy.patient_key.name), stored.column(link.name))
        yield result


def _file_sha256(blob: PendingBlob) -> str:
    """The SHA-256 of a written blob, read back (from the page cache, on a thread without the GIL)."""
    with open(blob.path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _second_pass(
    candidate: PendingBlob,
    data_key: bytes,
    class_ids: PendingBlob,
    ids_key: bytes,
    small: ops.SmallClasses,
    counts: _Counts,
    final: PendingBlob,
    policy: deid.DeidPolicy,
) -> str:
    schema = ops.stored_arrow_schema(policy)
    sink = crypto.SealedWriter(final.file, data_key, final.blob_id)
    with open(candidate.path, "rb") as data_file, open(class_ids.path, "rb") as ids_file:
        data = crypto.as_arrow_file(crypto.SealedReader(data_file, data_key, candidate.blob_id))
        ids = crypto.as_arrow_file(crypto.SealedReader(ids_file, ids_key, class_ids.blob_id))
        with ipc.open_stream(data) as data_reader, ipc.open_stream(ids) as ids_reader, \
                ipc.new_stream(sink, schema) as writer, \
                closing(_read_ahead(zip(data_reader, ids_reader, strict=True))) as ahead:
            counts.rows_without_linkage_id = 0  # counted again over the rows that stay
            for batch, batch_ids in ahead:
                kept, removed = ops.suppress_small_classes(batch, small, batch_ids.column(0))
                counts.rows_suppressed += removed
                counts.rows_stored += kept.num_rows
                counts.rows_without_linkage_id += ops.unlinked_rows(kept, policy)
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


class _End:
    """Marks the end of the items on the read-ahead queue."""


_END = _End()


def _read_ahead(items: Iterator[T], depth: int = READ_AHEAD) -> Generator[T]:
    """Produces `items` on a helper thread, at most `depth` ahead of the consumer.

    An error on the helper thread is raised in the consumer's. Close the generator (closing())
    when the consumer may stop early: that stops the helper and waits for it, so nothing reads
    the source any more once it returns.
    """
    ready: queue.Queue[tuple[T | _End, BaseException | None]] = queue.Queue(maxsize=depth)
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
        while not isinstance(item := (entry := ready.get())[0], _End):
            yield item
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
    link = policy.linkage
    if link is None:
        notes.append(deid.NO_LINKAGE_NOTE)
    elif counts.rows_without_linkage_id:
        notes.append(f"{counts.rows_without_linkage_id:,} rows have no linkage identifier in {link.name}: "
                     "their patients stay unlinked, distinct privacy units from every other hospital's")
    return IntakeReport(
        bytes_received=bytes_received,
        rows_received=counts.rows_received,
        rows_stored=counts.rows_stored,
        rows_without_patient_key=counts.rows_without_patient_key,
        k_anonymity=policy.k,
        equivalence_classes=counter.class_count(),
        classes_suppressed=len(small),
        rows_suppressed=counts.rows_suppressed,
        dropped_columns=tuple(c.name for c in policy.treated(deid.Treatment.DROP)),
        pseudonymized_columns=tuple(c.name for c in policy.treated(deid.Treatment.PSEUDONYMIZE)),
        linkage_column=link.name if link is not None else "",
        rows_without_linkage_id=counts.rows_without_linkage_id,
        generalized_columns=tuple(
            (c.name, c.generalization.describe()) for c in columns if c.generalization is not None
        ),
        notes=tuple(notes),
    )
