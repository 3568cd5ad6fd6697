"""Releases in the database: released statistics answers (their own table, migration 0016) and the
reads a release page needs of released jobs, their spends' ledger events and their audit entries.
Pages are ordered by release id across both kinds ("j…" jobs, then "s…" answers)."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from cleanroom.domain.jobs import Job, JobState
from cleanroom.domain.privacy import EventKind, LedgerEvent, Privacy
from cleanroom.storage import job_repo, privacy_repo
from cleanroom.storage.tables import AnswerReleaseRow, AuditEntryRow, JobRow, LedgerEventRow


@dataclass(frozen=True)
class StoredAnswer:
    """A released statistics answer as stored."""

    id: str
    manufacturer_id: str
    dataset_ids: tuple[str, ...]
    kind: str
    source: str
    spend_id: str
    spent: Privacy
    answer_json: bytes
    receipt: bytes
    audit_seqs: tuple[int, ...]
    released_at: datetime


@dataclass(frozen=True)
class Scope:
    """Which releases a listing may hold: a manufacturer's own, the datasets an officer governs
    (None: every one), and the caller's filters."""

    manufacturer_id: str | None = None
    dataset_ids: frozenset[str] | None = None
    dataset_id: str | None = None
    kinds: frozenset[str] | None = None    # "training", "evaluation", "statistics"


def add_answer(session: Session, answer: StoredAnswer) -> None:
    session.add(AnswerReleaseRow(
        id=answer.id, manufacturer_id=answer.manufacturer_id, dataset_id=answer.dataset_ids[0],
        datasets_json=json.dumps(list(answer.dataset_ids)), kind=answer.kind, source=answer.source, spend_id=answer.spend_id,
        epsilon=answer.spent.epsilon, delta=answer.spent.delta, answer_json=answer.answer_json, receipt=answer.receipt,
        audit_seqs_json=json.dumps(list(answer.audit_seqs)), released_at=answer.released_at,
    ))


def _answer(row: AnswerReleaseRow) -> StoredAnswer:
    return StoredAnswer(
        id=row.id, manufacturer_id=row.manufacturer_id, dataset_ids=tuple(json.loads(row.datasets_json)), kind=row.kind,
        source=row.source, spend_id=row.spend_id, spent=Privacy(row.epsilon, row.delta), answer_json=row.answer_json,
        receipt=row.receipt, audit_seqs=tuple(json.loads(row.audit_seqs_json)), released_at=row.released_at,
    )


def get_answer(session: Session, release_id: str) -> StoredAnswer | None:
    row = session.get(AnswerReleaseRow, release_id)
    return _answer(row) if row else None


def released_job(session: Session, job_id: str) -> Job | None:
    job = job_repo.get_job(session, job_id)
    return job if job is not None and job.state is JobState.RELEASED else None


def page(session: Session, scope: Scope, *, after_id: str | None, limit: int) -> list[Job | StoredAnswer]:
    """Up to `limit` releases after `after_id` in id order: released jobs and answers, merged."""
    kinds = scope.kinds
    jobs: list[Job | StoredAnswer] = []
    if kinds is None or kinds - {"statistics"}:
        jobs = [*_jobs_page(session, scope, after_id, limit)]
    answers: list[Job | StoredAnswer] = []
    if kinds is None or "statistics" in kinds:
        answers = [*_answers_page(session, scope, after_id, limit)]
    return sorted(jobs + answers, key=lambda item: item.id)[:limit]


def _jobs_page(session: Session, scope: Scope, after_id: str | None, limit: int) -> list[Job]:
    query = select(JobRow.id).where(JobRow.state == JobState.RELEASED.value)
    query = _scoped(query, JobRow.owner_id, JobRow.dataset_id, scope)
    if scope.kinds is not None:
        query = query.where(JobRow.kind.in_(scope.kinds - {"statistics"}))
    if after_id is not None:
        query = query.where(JobRow.id > after_id)
    ids = session.scalars(query.order_by(JobRow.id).limit(limit))
    return [job for job in (job_repo.get_job(session, i) for i in ids) if job is not None]


def _answers_page(session: Session, scope: Scope, after_id: str | None, limit: int) -> list[StoredAnswer]:
    query = _scoped(select(AnswerReleaseRow), AnswerReleaseRow.manufacturer_id, AnswerReleaseRow.dataset_id, scope)
    if after_id is not None:
        query = query.where(AnswerReleaseRow.id > after_id)
    return [_answer(row) for row in session.scalars(query.order_by(AnswerReleaseRow.id).limit(limit))]


def _scoped(query: Select[Any], owner: Any, dataset: Any, scope: Scope) -> Select[Any]:
    conditions = []
    if scope.manufacturer_id is not None:
        conditions.append(owner == scope.manufacturer_id)
    if scope.dataset_ids is not None:
        conditions.append(dataset.in_(scope.dataset_ids))
    if scope.dataset_id is not None:
        conditions.append(dataset == scope.dataset_id)
    return query.where(*conditions) if conditions else query


def spend_events(session: Session, spend_id: str, dataset_ids: Collection[str] | None) -> list[LedgerEvent]:
    """The ledger events of one spend, on `dataset_ids` only (None: on every dataset)."""
    query = select(LedgerEventRow).where(LedgerEventRow.spend_id == spend_id)
    if dataset_ids is not None:
        query = query.where(LedgerEventRow.dataset_id.in_(dataset_ids))
    return [_ledger_event(row) for row in session.scalars(query.order_by(LedgerEventRow.seq))]


def _ledger_event(row: LedgerEventRow) -> LedgerEvent:
    return LedgerEvent(
        kind=EventKind(row.kind), budget_ids=tuple(row.budget_ids.split(",")), amount=Privacy(row.epsilon, row.delta),
        actor_id=row.actor_id, at=row.at, spend_id=row.spend_id, mechanism=privacy_repo.mechanism_from_json(row.mechanism_json),
        reason=row.reason, seq=row.seq,
    )


def audit_seqs(session: Session, target: str) -> list[int]:
    return list(session.scalars(select(AuditEntryRow.seq).where(AuditEntryRow.target == target).order_by(AuditEntryRow.seq)))
