"""The audit chain in the database. Append is called last in a transaction (after any budget row
locks), and takes the head row's lock, so appends are serialised on PostgreSQL as on SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cleanroom.domain.audit import Anchor, AuditEntry, seal
from cleanroom.storage.tables import AuditEntryRow, AuditHeadRow

PAGE = 1000


def append(session: Session, *, actor: str, action: str, target: str, details: dict[str, Any] | None = None) -> AuditEntry:
    head = session.scalars(select(AuditHeadRow).where(AuditHeadRow.id == 1).with_for_update()).one()
    at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    entry = seal(AuditEntry(head.seq + 1, at, actor, action, target, details or {}, head.hash))
    session.add(
        AuditEntryRow(
            seq=entry.seq, at=entry.at, actor=entry.actor, action=entry.action, target=entry.target,
            details_json=json.dumps(entry.details, sort_keys=True), prev_hash=entry.prev_hash, hash=entry.hash,
        )
    )
    session.execute(update(AuditHeadRow).where(AuditHeadRow.id == 1).values(seq=entry.seq, hash=entry.hash))
    return entry


def _entry(row: AuditEntryRow) -> AuditEntry:
    return AuditEntry(row.seq, row.at, row.actor, row.action, row.target, json.loads(row.details_json), row.prev_hash, row.hash)


def page(session: Session, *, after_seq: int, limit: int = PAGE, targets: set[str] | None = None) -> list[AuditEntry]:
    query = select(AuditEntryRow).where(AuditEntryRow.seq > after_seq)
    if targets is not None:
        query = query.where(AuditEntryRow.target.in_(targets))
    return [_entry(r) for r in session.scalars(query.order_by(AuditEntryRow.seq).limit(limit))]


def entries(session: Session) -> Iterator[AuditEntry]:
    """Every entry in seq order, a page at a time, so a long log is never loaded whole."""
    after_seq = 0
    while batch := page(session, after_seq=after_seq):
        yield from batch
        after_seq = batch[-1].seq


def head(session: Session) -> Anchor:
    row = session.get(AuditHeadRow, 1)
    assert row is not None
    return Anchor(row.seq, row.hash)
