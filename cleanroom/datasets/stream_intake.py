"""Stream intake: parse, de-identify, check, and store a wellness-IoT stream as a sealed stream
table (cleanroom/crypto/sealed_table.py), in bounded memory.

Two passes; plaintext never touches disk:
1. the upload, batch by batch (the table readers, on helper threads): identifiers dropped, the
   patient key pseudonymised, units and time order checked (stream_checks); each de-identified
   reading goes to one of P temporary partitions by a hash of its patient's pseudonym, each sealed
   under a key that lives only in memory, so one patient's readings all land in one partition;
2. partition by partition (stream_partitions: whole when it fits half of PARTITION_BYTES, else in
   groups of patients that fit, and a patient who alone does not a piece at a time): each
   patient's readings shifted, coarsened and averaged (stream_cells), and written patient by
   patient into the sealed stream table under the dataset's key.
Peak memory is a few upload batches in pass one, what pass two reads at once (a few copies of it),
plus a last time, a count and a span per patient; never the file, nor one patient's stream. The temporary partitions are removed as
soon as they are read, and all of them on any error. k-anonymity does not apply: a stream declares
no quasi-identifiers (cleanroom.domain.streams), so no reading is suppressed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass

import pyarrow as pa

from cleanroom.crypto.sealed_table import SealedTableWriter
from cleanroom.datasets import deidentify as ops
from cleanroom.datasets.intake import IntakeResult, _parse, _read_ahead
from cleanroom.datasets.stream_cells import Cells, StreamCounts
from cleanroom.datasets.stream_checks import BatchChecks, StreamBatch
from cleanroom.datasets.stream_partitions import Partitions, Piece
from cleanroom.datasets.stream_times import EPOCH, NAIVE, TimeParser
from cleanroom.datasets.upload_stream import UploadStream
from cleanroom.domain import deid
from cleanroom.domain.datasets import IntakeReport
from cleanroom.domain.errors import CleanroomError, FieldViolation, bad_request
from cleanroom.domain.streams import StreamIntakeSummary, StreamSpec
from cleanroom.storage.blobs import BlobStore, PendingBlob

# What pass two may hold for one partition, about: the partition read back, sorted and merged
# copies, numpy work arrays.
PARTITION_BYTES = 128 << 20
# A partition's readings take about half their CSV text in Arrow (a dictionary index for the
# pseudonym, 8 bytes of time, 4 per channel), and pass two holds them a few times over: sizing by
# twice the file leaves room for that, for uneven patients, and for Parquet, which packs tighter
# than CSV. Measured: a 218 MB CSV in 4 partitions, RSS +354 MB; in 14, +250 MB.
ARROW_BYTES_PER_FILE_BYTE = 2
DEFAULT_PARTITIONS = 64  # the upload's size is not known: up to 8 GB stays within PARTITION_BYTES
MAX_PARTITIONS = 256  # files open at once; past a 16 GB upload a partition grows beyond PARTITION_BYTES


def partition_count(size_bytes: int, partition_bytes: int = PARTITION_BYTES) -> int:
    if size_bytes <= 0:
        return DEFAULT_PARTITIONS
    return min(MAX_PARTITIONS, max(1, math.ceil(size_bytes * ARROW_BYTES_PER_FILE_BYTE / partition_bytes)))


def ingest_stream(
    stream: UploadStream,
    *,
    file_format: str,
    policy: deid.DeidPolicy,
    spec: StreamSpec,
    pseudonymizer: ops.Pseudonymizer,
    shift_key: bytes,
    blobs: BlobStore,
    dataset_id: str,
    data_key: bytes,
    size_bytes: int = 0,
    partition_bytes: int = PARTITION_BYTES,
) -> IntakeResult:
    """`policy` from deid.validate_policy(..., stream=True) and `spec` checked by
    streams.validate_stream; `shift_key` keys the per-patient time shift (identity.keyring);
    `size_bytes` (the upload's declared size, 0: unknown) sizes the partitions."""
    final = blobs.create(dataset_id)
    try:
        with ExitStack() as temporaries:
            partitions = Partitions(blobs, dataset_id, partition_count(size_bytes, partition_bytes),
                                    policy.patient_key.name, temporaries)
            checks = BatchChecks.start(policy, spec, pseudonymizer)
            counts = _RowCounts()
            try:
                _first_pass(stream, file_format, policy, checks, partitions, counts, temporaries)
            except CleanroomError as error:
                raise stream.explain(error) from None
            stream.verify_trailer()
            _check_declared_size(stream, size_bytes)
            cells, stored = Cells(spec, policy.patient_key.name, shift_key), StreamCounts()
            digest = _second_pass(partitions.read_back(partition_bytes // 2), cells, stored, final, data_key, checks)
        summary = stored.summary(spec, checks.times.time_zone)
        report = _report(policy, spec, stream.bytes_received, counts, summary, checks.times)
    except BaseException:
        final.abort()
        raise
    return IntakeResult(report, summary.patients, digest, final)


def _check_declared_size(stream: UploadStream, size_bytes: int) -> None:
    """The declared size chose the partitions: in a larger file each would outgrow what pass two
    reads at once, and be read back in many scans (memory stays bounded; time would not). The SDK
    declares the file's exact size."""
    if 0 < size_bytes < stream.bytes_received:
        raise bad_request("the file is larger than its declared size; nothing was stored",
                          FieldViolation("metadata.size_bytes", "smaller than the file"))


@dataclass
class _RowCounts:
    rows_received: int = 0
    rows_without_patient_key: int = 0


def _first_pass(stream: UploadStream, file_format: str, policy: deid.DeidPolicy, checks: BatchChecks,
                partitions: Partitions, counts: _RowCounts, temporaries: ExitStack) -> None:
    batches = _parse(stream, file_format, policy, partitions.blobs, partitions.dataset_id, temporaries)
    with closing(batches), closing(_read_ahead(_checked(batches, checks, counts))) as checked:
        for batch in checked:
            partitions.write(batch.batch, batch.patients)
    partitions.close_writers()


def _checked(batches: Iterator[pa.RecordBatch], checks: BatchChecks, counts: _RowCounts) -> Iterator[StreamBatch]:
    """De-identifies and checks each batch (on a helper thread of its own, as table intake does)."""
    for batch in batches:
        result = checks.deidentify(batch, first_row=counts.rows_received + 1)
        counts.rows_received += batch.num_rows
        counts.rows_without_patient_key += result.rows_without_patient_key
        yield result


def _second_pass(pieces: Iterator[Piece], cells: Cells, counts: StreamCounts, final: PendingBlob,
                 data_key: bytes, checks: BatchChecks) -> str:
    patient = checks.policy.patient_key.name
    writer = SealedTableWriter(final.file, data_key, final.blob_id, checks.schema, patient_column=patient,
                               time_column=checks.spec.time_column, digest=True)
    with writer:
        for piece in pieces:
            if piece.patient:  # one patient outgrew a partition: its pieces follow each other
                rows_of = cells.pieces(_one_patient(piece, pieces), counts)
            else:
                rows_of = cells.patients(piece.table, counts)
            for rows in rows_of:
                writer.write_patient(rows)
    final.file.flush()
    return writer.ciphertext_sha256


def _one_patient(first: Piece, pieces: Iterator[Piece]) -> Iterator[tuple[pa.Table, bool]]:
    """The pieces of one patient, from `first` to the patient's last (taken from `pieces`)."""
    piece = first
    yield piece.table, piece.last
    while not piece.last:
        piece = next(pieces)
        yield piece.table, piece.last


def _report(policy: deid.DeidPolicy, spec: StreamSpec, bytes_received: int, counts: _RowCounts,
            summary: StreamIntakeSummary, times: TimeParser) -> IntakeReport:
    return IntakeReport(
        bytes_received=bytes_received,
        rows_received=counts.rows_received,
        rows_stored=summary.readings,
        rows_without_patient_key=counts.rows_without_patient_key,
        k_anonymity=policy.k,
        dropped_columns=tuple(c.name for c in policy.treated(deid.Treatment.DROP)),
        pseudonymized_columns=tuple(c.name for c in policy.treated(deid.Treatment.PSEUDONYMIZE)),
        notes=tuple(_notes(spec, summary, times)),
        stream=summary,
    )


def _notes(spec: StreamSpec, summary: StreamIntakeSummary, times: TimeParser) -> list[str]:
    notes = []
    if summary.readings == 0:
        notes.append("no readings remain after de-identification; the dataset is stored empty")
    notes.append("k-anonymity does not apply to a stream: it declares no quasi-identifiers, so no "
                  "equivalence classes were formed and no reading was suppressed")
    if times.zone == NAIVE:
        notes.append(f"{spec.time_column}: timestamps without a UTC offset were taken as UTC")
    elif times.zone not in (None, EPOCH):
        notes.append(f"{spec.time_column}: timestamps carried the offset {times.time_zone}; stored as UTC epoch seconds")
    if spec.max_shift_days:
        notes.append(f"{spec.time_column}: each patient's times were moved by a secret whole number of days "
                     f"between -{spec.max_shift_days} and +{spec.max_shift_days} (the same for all of a patient's "
                     "readings; the time of day is kept)")
    else:
        notes.append(f"{spec.time_column}: times were not shifted")
    resolution = spec.time_resolution_seconds
    notes.append(f"{spec.time_column}: floored to {resolution} s; {summary.readings_merged:,} readings shared a cell "
                 "with an earlier one and were merged into it (channels averaged, other columns the cell's last value)")
    for channel in spec.channels:
        if channel.unit_column:
            notes.append(f"{channel.unit_column}: every reading's unit was {channel.unit} as declared for "
                         f"{channel.name}; the column is not stored")
    notes.append(deid.NO_LINKAGE_NOTE)
    return notes
