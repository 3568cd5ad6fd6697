"""DP jobs in the database. State changes are conditional UPDATEs from the expected state, so two
threads (or a restart) can never both move the same job."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cleanroom.domain.jobs import FailureCode, Job, JobKind, JobState
from cleanroom.storage import lease_repo
from cleanroom.storage.db import affected_rows
from cleanroom.storage.tables import JobRow, PrivacyRequestRow


def add_job(session: Session, job: Job) -> None:
    session.add(JobRow(
        id=job.id, kind=job.kind.value, owner_id=job.owner_id, model_id=job.model_id, dataset_id=job.dataset_id,
        spec_json=job.spec_json, state=job.state.value, failure=job.failure.value, privacy_request_id=job.privacy_request_id,
        spend_id=job.spend_id, workload=job.workload, cancel_requested=False, artifacts_json="[]", created_at=job.created_at,
    ))


def _job(row: JobRow) -> Job:
    return Job(
        id=row.id, kind=JobKind(row.kind), owner_id=row.owner_id, model_id=row.model_id, dataset_id=row.dataset_id,
        spec_json=row.spec_json, state=JobState(row.state), created_at=row.created_at, failure=FailureCode(row.failure),
        privacy_request_id=row.privacy_request_id, spend_id=row.spend_id, workload=row.workload, finished_at=row.finished_at,
    )


def get_job(session: Session, job_id: str) -> Job | None:
    row = session.get(JobRow, job_id)
    return _job(row) if row else None


def list_jobs(session: Session, *, owner_id: str, after_id: str | None, limit: int) -> list[Job]:
    query = select(JobRow).where(JobRow.owner_id == owner_id).order_by(JobRow.id).limit(limit)
    if after_id is not None:
        query = query.where(JobRow.id > after_id)
    return [_job(r) for r in session.scalars(query)]


def jobs_in(session: Session, state: JobState, limit: int = 100) -> list[Job]:
    query = select(JobRow).where(JobRow.state == state.value).order_by(JobRow.created_at, JobRow.id).limit(limit)
    return [_job(r) for r in session.scalars(query)]


def move(session: Session, job: Job, expected: JobState, **values: Any) -> bool:
    """Writes the job's new state (and any other column) only if it is still in `expected`."""
    values = {"state": job.state.value, "failure": job.failure.value, "finished_at": job.finished_at, **values}
    result = session.execute(update(JobRow).where(JobRow.id == job.id, JobRow.state == expected.value).values(**values))
    return affected_rows(result) == 1


def claim(session: Session, job: Job, expected: JobState, owner: str | None) -> bool:
    """`move` that also records the server now running the job (its lease owns it)."""
    return move(session, job, expected, owner=owner)


def orphaned_running(session: Session, at: datetime) -> list[Job]:
    """Running jobs whose server holds no live lease at `at` (it died, or ran before leases existed)."""
    query = select(JobRow).where(JobRow.state == JobState.RUNNING.value, lease_repo.orphaned(JobRow.owner, at))
    return [_job(r) for r in session.scalars(query.order_by(JobRow.created_at, JobRow.id))]


def spends_still_wanted(session: Session) -> set[str]:
    """Reservations of jobs that will still run or are running: queued and running jobs', and those
    of pending jobs whose privacy request was approved but not yet promoted."""
    held = session.scalars(select(JobRow.spend_id).where(
        JobRow.state.in_((JobState.QUEUED.value, JobState.RUNNING.value)), JobRow.spend_id.is_not(None)))
    pending = session.scalars(
        select(PrivacyRequestRow.spend_id)
        .join(JobRow, JobRow.privacy_request_id == PrivacyRequestRow.id)
        .where(JobRow.state == JobState.PENDING_APPROVAL.value, PrivacyRequestRow.spend_id.is_not(None)))
    return {s for s in held if s} | {s for s in pending if s}


def request_cancel(session: Session, job_id: str) -> None:
    session.execute(update(JobRow).where(JobRow.id == job_id).values(cancel_requested=True))


def cancel_requested(session: Session, job_id: str) -> bool:
    row = session.get(JobRow, job_id)
    return bool(row and row.cancel_requested)


def artifacts(session: Session, job_id: str) -> tuple[list[dict[str, Any]], bytes | None]:
    row = session.get(JobRow, job_id)
    return (json.loads(row.artifacts_json), row.wrapped_key) if row else ([], None)


def artifact_values(listing: list[dict[str, Any]], wrapped_key: bytes) -> dict[str, Any]:
    return {"artifacts_json": json.dumps(listing, sort_keys=True), "wrapped_key": wrapped_key}

