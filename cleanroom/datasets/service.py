"""Dataset use cases: upload, read, list and delete, with the role rules of each.

A dataset belongs to its uploader's organisation: every data owner of that hospital sees and
deletes it (a colleague's upload too); to another organisation it does not exist (NOT_FOUND)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator

from cleanroom import crypto
from cleanroom.datasets import deidentify as ops
from cleanroom.datasets.intake import IntakeResult, ingest
from cleanroom.datasets.stream_intake import ingest_stream
from cleanroom.datasets.upload_stream import Trailer, UploadStream, too_large
from cleanroom.domain import deid, streams
from cleanroom.domain.datasets import Dataset, UploadRequest, can_manage, new_dataset_id, parse_dataset_name, schema_view
from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request
from cleanroom.domain.identity import Principal, Role
from cleanroom.domain.organisations import platform_wide
from cleanroom.domain.pagination import PageRequest
from cleanroom.identity.keyring import KeyService
from cleanroom.observability.metrics import Metrics
from cleanroom.storage import audit_repo, clock, dataset_repo, privacy_repo
from cleanroom.storage.blobs import BlobStore
from cleanroom.storage.db import Database

log = logging.getLogger(__name__)

NOT_FOUND_MESSAGE = "dataset not found"


class DatasetService:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        keys: KeyService,
        *,
        max_upload_bytes: int,
        default_k: int,
        metrics: Metrics | None = None,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._keys = keys
        self._max_upload_bytes = max_upload_bytes
        self._default_k = default_k
        self.metrics = metrics

    def validate_upload(self, request: UploadRequest) -> deid.DeidPolicy:
        """Everything checkable before a byte of the file is read."""
        violations = []
        if not request.display_name.strip() or len(request.display_name) > 200:
            violations.append(FieldViolation("metadata.display_name", "1 to 200 characters"))
        if request.size_bytes < 0:
            violations.append(FieldViolation("metadata.size_bytes", "must not be negative"))
        if violations:
            raise bad_request("the upload metadata is invalid", *violations)
        if request.size_bytes > self._max_upload_bytes:
            raise too_large(self._max_upload_bytes)
        k = request.k_anonymity or self._default_k
        if request.stream is None:
            return deid.validate_policy(request.columns, k)
        return _validate_stream_upload(request.columns, k, request.stream)

    def upload(self, owner: Principal, request: UploadRequest, parts: Iterator[bytes | Trailer]) -> Dataset:
        try:
            dataset = self._upload(owner, request, parts)
        except CleanroomError as error:
            self._count_upload("rejected")
            log.info("upload rejected", extra={"owner": owner.id, "code": error.code.value})
            raise
        self._count_upload("stored", dataset)
        log.info("dataset stored", extra={"dataset": dataset.id, "owner": owner.id, "rows": dataset.row_count})
        return dataset

    def _count_upload(self, outcome: str, dataset: Dataset | None = None) -> None:
        if self.metrics is None:
            return
        self.metrics.uploads.labels(outcome).inc()
        if dataset is not None:
            self.metrics.upload_bytes.inc(dataset.report.bytes_received)
            self.metrics.upload_rows.inc(dataset.row_count)

    def _upload(self, owner: Principal, request: UploadRequest, parts: Iterator[bytes | Trailer]) -> Dataset:
        policy = self.validate_upload(request)
        dataset_id = new_dataset_id()
        data_key = crypto.new_data_key()
        stream = UploadStream(parts, max_bytes=self._max_upload_bytes)
        pseudonymizer = ops.Pseudonymizer(self._keys.pseudonym_key(owner.id))
        if request.stream is not None:
            result = ingest_stream(stream, file_format=request.file_format, policy=policy, spec=request.stream,
                                   pseudonymizer=pseudonymizer, shift_key=self._keys.time_shift_key(owner.id),
                                   blobs=self._blobs, dataset_id=dataset_id, data_key=data_key,
                                   size_bytes=request.size_bytes)
            summary = result.report.stream
            assert summary is not None
            return self._stored(owner, request, policy, dataset_id, data_key, result, streams.describe(request.stream, summary))
        linkage = ops.LinkagePseudonymizer(self._keys.linkage_key()) if policy.linkage is not None else None
        result = ingest(
            stream,
            file_format=request.file_format,
            policy=policy,
            pseudonymizer=pseudonymizer,
            blobs=self._blobs,
            dataset_id=dataset_id,
            data_key=data_key,
            linkage=linkage,
        )
        return self._stored(owner, request, policy, dataset_id, data_key, result, None)

    def _stored(self, owner: Principal, request: UploadRequest, policy: deid.DeidPolicy, dataset_id: str,
                data_key: bytes, result: IntakeResult, stream: streams.StreamDescription | None) -> Dataset:
        dataset = Dataset(
            id=dataset_id,
            owner_id=owner.id,
            organisation_id=owner.organisation_id,
            display_name=request.display_name.strip(),
            description=request.description,
            columns=policy.columns,
            k_anonymity=policy.k,
            row_count=result.report.rows_stored,
            patient_count=result.patient_count,
            report=result.report,
            ciphertext_sha256=result.ciphertext_sha256,
            created_at=clock.now(),
            stream=stream,
        )
        self._store(dataset, result.blob, self._keys.wrap_dataset_key(dataset_id, data_key))
        return dataset

    def _store(self, dataset: Dataset, blob: object, wrapped_key: bytes) -> None:
        """The blob is renamed into place inside the metadata transaction: both land, or neither."""
        try:
            with self._db.transaction() as session:
                dataset_repo.add_dataset(session, dataset, wrapped_key)
                session.flush()
                audit_repo.append(session, actor=f"principals/{dataset.owner_id}", action="dataset.upload",
                                  target=dataset.resource_name, details={"rows": dataset.row_count, "patients": dataset.patient_count})
                blob.commit()  # type: ignore[attr-defined]
        except BaseException:
            blob.abort()  # type: ignore[attr-defined]
            self._blobs.delete(dataset.id)
            raise

    def get(self, principal: Principal, name: str) -> Dataset:
        dataset = self._visible(principal, name)
        return dataset if _manages(principal, dataset) else schema_view(dataset)

    def list(self, principal: Principal, page: PageRequest) -> list[Dataset]:
        """A hospital lists its own datasets; a manufacturer the schemas shared with it; an officer or
        auditor the schemas of the datasets it governs (its hospital's, or all for the operator's)."""
        with self._db.read() as session:
            if principal.role in (Role.PRIVACY_OFFICER, Role.AUDITOR):
                governed = None if platform_wide(principal.organisation_id) else (
                    dataset_repo.organisation_dataset_ids(session, principal.organisation_id))
                found = dataset_repo.list_datasets(session, owner_id=None, ids=governed, after_id=page.after_id, limit=page.size)
                return [schema_view(d) for d in found]
            if principal.role is Role.DATA_OWNER and principal.organisation_id:
                colleagues = dataset_repo.organisation_dataset_ids(session, principal.organisation_id)
                return dataset_repo.list_datasets(session, owner_id=None, ids=colleagues, after_id=page.after_id, limit=page.size)
            if principal.role is Role.DATA_OWNER:  # a principal made before organisations (tests only)
                return dataset_repo.list_datasets(session, owner_id=principal.id, after_id=page.after_id, limit=page.size)
            shared = privacy_repo.shared_dataset_ids(session, principal.id)
            found = dataset_repo.list_datasets(session, owner_id=None, ids=shared, after_id=page.after_id, limit=page.size)
        return [schema_view(d) for d in found]

    def delete(self, principal: Principal, name: str) -> str:
        dataset = self._visible(principal, name)
        if not _manages(principal, dataset):
            raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND_MESSAGE)
        with self._db.transaction() as session:
            dataset_repo.shred_dataset(session, dataset.id)
            audit_repo.append(session, actor=principal.resource_name, action="dataset.delete", target=dataset.resource_name,
                              details={"key": "destroyed"})
        self._blobs.delete(dataset.id)
        log.info("dataset deleted", extra={"dataset": dataset.id})
        return dataset.resource_name

    def open_plaintext(self, dataset_id: str) -> crypto.SealedReader:
        """Service-internal: a decrypting reader over a dataset's Arrow IPC stream."""
        with self._db.read() as session:
            wrapped = dataset_repo.wrapped_dataset_key(session, dataset_id)
        if wrapped is None:
            raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND_MESSAGE)
        key = self._keys.unwrap_dataset_key(dataset_id, wrapped)
        return crypto.SealedReader(self._blobs.open(dataset_id), key, dataset_id)

    def sweep_partial_uploads(self, live: Callable[[], Collection[str]] | None = None) -> int:
        """Start-up: removes staging files (with `live`, only those of servers not in it: never a live
        peer's upload in progress). A committed blob no row references is left alone: a
        database that looks empty is not a reason to delete data (`cleanroom admin gc` removes them)."""
        return self._blobs.sweep_temporary(live)

    def _visible(self, principal: Principal, name: str) -> Dataset:
        dataset_id = parse_dataset_name(name)
        if dataset_id is None:
            raise bad_request("name must look like datasets/{id}", FieldViolation("name", "not a dataset name"))
        with self._db.read() as session:
            dataset = dataset_repo.get_dataset(session, dataset_id)
            shared = principal.role is Role.MANUFACTURER and privacy_repo.is_shared(session, dataset_id, principal.id)
        # Another tenant's dataset is reported exactly like a missing one.
        if dataset is None or not (shared or _manages(principal, dataset)):
            raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND_MESSAGE)
        return dataset


def _validate_stream_upload(columns: tuple[deid.ColumnSpec, ...], k: int, spec: streams.StreamSpec) -> deid.DeidPolicy:
    """The column rules and the stream's own rules, every violation in one error."""
    violations = streams.validate_stream(columns, spec)
    try:
        policy = deid.validate_policy(columns, k, stream=True)
    except CleanroomError as error:
        raise bad_request(error.message, *error.violations, *violations) from None
    if violations:
        raise bad_request("the stream declaration is invalid", *violations)
    return policy


def _manages(principal: Principal, dataset: Dataset) -> bool:
    """A data owner manages its own uploads and those of its organisation's other data owners."""
    same_organisation = bool(principal.organisation_id) and principal.organisation_id == dataset.organisation_id
    return can_manage(principal, dataset) or (principal.role is Role.DATA_OWNER and same_organisation)
