"""The audit chain in the database. Append is called last in a transaction (after any budget row
locks), and takes the head row's lock, so appends are serialised on PostgreSQL as on SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from cleanroom.domain.audit import Anchor, AuditEntry, seal
from cleanroom.storage.tables import AuditEntryRow, AuditHeadRow

PAGE = 1000


@dataclass(frozen=True)
class Record:
    """An entry to append: who did what to which resource, with its details."""

    actor: str
    action: str
    target: str
    details: dict[str, Any] = field(default_factory=dict)


def append(session: Session, *, actor: str, action: str, target: str, details: dict[str, Any] | None = None) -> AuditEntry:
    return append_many(session, [Record(actor, action, target, details or {})])[0]


# Built once: the statements of every append (statement objects cache their compiled form).
_HEAD_FOR_UPDATE = select(AuditHeadRow.seq, AuditHeadRow.hash).where(AuditHeadRow.id == 1).with_for_update()
_HEAD_TABLE = cast(Table, AuditHeadRow.__table__)  # declared a FromClause; a mapped class's is a Table
_MOVE_HEAD = update(_HEAD_TABLE).where(_HEAD_TABLE.c.id == 1).values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
_INSERT_ENTRIES = insert(cast(Table, AuditEntryRow.__table__))


def append_many(session: Session, records: Sequence[Record]) -> list[AuditEntry]:
    """Appends in order under one lock of the head row, as one multi-row insert (a group commit's batch)."""
    seq, previous = session.execute(_HEAD_FOR_UPDATE).one()
    entries = []
    for record in records:
        at = datetime.now(UTC).isoformat(timespec="microseconds")
        seq += 1
        entry = seal(AuditEntry(seq, at, record.actor, record.action, record.target, record.details, previous))
        entries.append(entry)
        previous = entry.hash
    if not entries:
        return entries
    session.execute(_INSERT_ENTRIES, [
        {"seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action, "target": e.target,
         "details_json": json.dumps(e.details, sort_keys=True), "prev_hash": e.prev_hash, "hash": e.hash}
        for e in entries
    ])
    session.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": previous})
    return entries


def _entry(row: AuditEntryRow) -> AuditEntry:
    return AuditEntry(row.seq, row.at, row.actor, row.action, row.target, json.loads(row.details_json), row.prev_hash, row.hash)


def page(session: Session, *, after_seq: int, limit: int = PAGE) -> list[AuditEntry]:
    """Entries after `after_seq` in order; who may read which is privacy/audit.py's rule."""
    query = select(AuditEntryRow).where(AuditEntryRow.seq > after_seq)
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
