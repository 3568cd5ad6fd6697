"""Release use cases: list, read and download what left the clean room, for the people who answer
for it. Privacy officers and auditors see the releases over datasets they govern
(cleanroom/privacy/scope.py), a manufacturer its own; any other release is NOT_FOUND, the same
answer a missing one gets. Downloads stream the stored bytes (a released job's sealed artefacts,
opened with its key; an answer's signed bytes), so a verifier recomputes digests from what is kept."""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session

import enclave_sim
from cleanroom import crypto
from cleanroom.domain.cohort import cohort_key
from cleanroom.domain.errors import CleanroomError, ErrorCode, IntegrityError
from cleanroom.domain.identity import Principal, Role
from cleanroom.domain.jobs import Job
from cleanroom.domain.pagination import PageRequest
from cleanroom.domain.privacy import ZERO, LedgerEvent
from cleanroom.domain.releases import (
    ANSWER_FILE,
    NOT_FOUND,
    RECEIPT_FILE,
    Release,
    ReleasedFile,
    ReleaseKind,
    Workload,
    is_answer,
)
from cleanroom.identity.keyring import KeyService
from cleanroom.jobs.service import job_context
from cleanroom.privacy.scope import governed_dataset_ids
from cleanroom.storage import audit_repo, job_repo, model_repo, privacy_repo, release_repo
from cleanroom.storage.blobs import BlobStore
from cleanroom.storage.db import Database

CHUNK = 1 << 20


@dataclass(frozen=True)
class Filter:
    dataset_id: str | None = None
    manufacturer_id: str | None = None
    kind: ReleaseKind | None = None


@dataclass(frozen=True)
class Viewed:
    """A release as its viewer may see it, with the ledger events on datasets the viewer governs."""

    release: Release
    ledger_events: tuple[LedgerEvent, ...] = ()


class ReleaseService:
    def __init__(self, db: Database, blobs: BlobStore, keys: KeyService) -> None:
        self._db, self._blobs, self._keys = db, blobs, keys

    def list(self, viewer: Principal, page: PageRequest, where: Filter) -> builtins.list[Release]:
        with self._db.read() as session:
            scope = self._scope(session, viewer, where)
            items = release_repo.page(session, scope, after_id=page.after_id, limit=page.size)
            return [self._release(session, item, listing=True) for item in items]

    def get(self, viewer: Principal, release_id: str) -> Viewed:
        """The release with its receipt as stored, and its ledger events on datasets the viewer governs."""
        with self._db.read() as session:
            release = self._visible(session, viewer, release_id)
            governed = None if viewer.role is Role.MANUFACTURER else governed_dataset_ids(session, viewer)
            events = release_repo.spend_events(session, release.spend_id, governed) if release.spend_id else []
            listing, wrapped = job_repo.artifacts(session, release_id) if not is_answer(release_id) else ([], None)
        if not release.receipt and wrapped is not None:
            release = replace(release, receipt=self._job_receipt(release_id, listing, wrapped))
        return Viewed(release, tuple(events))

    def _job_receipt(self, job_id: str, listing: builtins.list[dict[str, Any]], wrapped: bytes) -> bytes:
        """A job's receipt is sealed like its other artefacts; an altered one reads as none (it cannot verify)."""
        stored = next((a for a in listing if a["name"] == RECEIPT_FILE), None)
        if stored is None:
            return b""
        try:
            return b"".join(self._sealed(job_id, stored["blob"], wrapped))
        except IntegrityError:
            return b""

    def download(self, viewer: Principal, release_id: str, artifact: str) -> Iterator[bytes]:
        """The artefact's stored bytes; the download is audited (who read which release's file)."""
        with self._db.read() as session:
            release = self._visible(session, viewer, release_id)
            answer = release_repo.get_answer(session, release_id) if is_answer(release_id) else None
            listing, wrapped = job_repo.artifacts(session, release_id) if answer is None else ([], None)
        entry = next((f for f in release.files if f.name == artifact), None)
        if entry is None:
            raise CleanroomError(ErrorCode.NOT_FOUND, "artifact not found")
        with self._db.transaction() as session:
            audit_repo.append(session, actor=viewer.resource_name, action="release.download", target=release.resource_name,
                              details={"artifact": artifact, "sha256": entry.sha256})
        if answer is not None:
            yield answer.receipt if artifact == RECEIPT_FILE else answer.answer_json
            return
        stored = next(a for a in listing if a["name"] == artifact)
        assert wrapped is not None
        yield from self._sealed(release_id, stored["blob"], wrapped)

    def _sealed(self, job_id: str, blob_id: str, wrapped: bytes) -> Iterator[bytes]:
        if not self._blobs.exists(blob_id):
            raise IntegrityError("the stored artifact is missing from the store")
        key = self._keys.unwrap_key(job_context(job_id), wrapped)
        try:
            with self._blobs.open(blob_id) as sealed:
                reader = crypto.SealedReader(sealed, key, blob_id)
                while chunk := reader.read(CHUNK):
                    yield chunk
        except IntegrityError:  # the stored blob was altered: nothing of it passes as the release's bytes
            raise IntegrityError("the stored artifact fails its integrity check: it was altered after release") from None

    # --- who sees what ----------------------------------------------------------------------------

    @staticmethod
    def _scope(session: Session, viewer: Principal, where: Filter) -> release_repo.Scope:
        kinds = frozenset({where.kind.value}) if where.kind is not None else None
        if viewer.role is Role.MANUFACTURER:
            if where.manufacturer_id not in (None, viewer.id):  # another's: none to show, as if it had none
                return release_repo.Scope(manufacturer_id="", dataset_id=where.dataset_id, kinds=kinds)
            return release_repo.Scope(manufacturer_id=viewer.id, dataset_id=where.dataset_id, kinds=kinds)
        governed = governed_dataset_ids(session, viewer)
        return release_repo.Scope(manufacturer_id=where.manufacturer_id, dataset_ids=frozenset(governed) if governed is not None else None,
                                  dataset_id=where.dataset_id, kinds=kinds)

    def _visible(self, session: Session, viewer: Principal, release_id: str) -> Release:
        item: Job | release_repo.StoredAnswer | None
        item = release_repo.get_answer(session, release_id) if is_answer(release_id) else release_repo.released_job(session, release_id)
        release = self._release(session, item) if item is not None else None
        if release is None or not self._may_see(session, viewer, release):
            raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
        return release

    @staticmethod
    def _may_see(session: Session, viewer: Principal, release: Release) -> bool:
        if viewer.role is Role.MANUFACTURER:
            return release.manufacturer_id == viewer.id
        if viewer.role not in (Role.PRIVACY_OFFICER, Role.AUDITOR):
            return False
        governed = governed_dataset_ids(session, viewer)
        return governed is None or any(d in governed for d in release.dataset_ids)

    # --- assembling a release ---------------------------------------------------------------------

    @staticmethod
    def _release(session: Session, item: Job | release_repo.StoredAnswer, *, listing: bool = False) -> Release:
        """`listing`: for a page of many, without what only the release's own page shows (its audit entries)."""
        if isinstance(item, release_repo.StoredAnswer):
            return _answer_release(item)
        return _job_release(session, item, audit=not listing)


def _answer_release(answer: release_repo.StoredAnswer) -> Release:
    files = tuple(ReleasedFile(name, len(data), enclave_sim.sha256_hex(data))
                  for name, data in sorted({ANSWER_FILE: answer.answer_json, RECEIPT_FILE: answer.receipt}.items()))
    ids = answer.dataset_ids
    return Release(answer.id, ReleaseKind.STATISTICS, ids, answer.manufacturer_id, answer.released_at, answer.spent, answer.spend_id,
                   answer.receipt, files, answer.audit_seqs, answer.source,
                   Workload(cohort_key(ids) if len(ids) > 1 else ids[0]), summary=answer.kind)


def _job_release(session: Session, job: Job, *, audit: bool) -> Release:
    listing, _ = job_repo.artifacts(session, job.id)
    spend = privacy_repo.get_spend(session, job.spend_id) if job.spend_id else None
    params = job.params
    ids = tuple(site.dataset_id for site in params.cohort) or (job.dataset_id,)
    model = model_repo.get_model(session, job.model_id)
    workload = Workload(cohort_key(ids) if params.cohort else job.dataset_id, f"models/{job.model_id}",
                        model.package_sha256 if model else "", params.to_json())
    files = tuple(ReleasedFile(a["name"], a["size"], a["sha256"]) for a in listing)
    assert job.finished_at is not None
    return Release(job.id, ReleaseKind(job.kind.value), ids, job.owner_id, job.finished_at, spend.committed if spend else ZERO,
                   job.spend_id or "", b"", files, tuple(release_repo.audit_seqs(session, job.resource_name)) if audit else (),
                   job.resource_name, workload)
