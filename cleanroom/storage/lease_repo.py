"""Server leases in the database (migration 0009): a row per running server with a heartbeat.

Work in flight carries its owner's instance id. `orphaned(column, at)` is the SQL condition "owned
by no live server" (no owner at all, or an owner whose lease has expired or is gone), evaluated
in the same statement that reads or changes the work, so a server that starts meanwhile is never
taken for a dead one.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, ScalarSelect, SQLColumnExpression, delete, or_, select, update
from sqlalchemy.orm import Session

from cleanroom.storage.db import affected_rows
from cleanroom.storage.tables import ServerLeaseRow


def acquire(session: Session, instance_id: str, *, host: str, pid: int, at: datetime, lease: timedelta) -> None:
    session.add(ServerLeaseRow(instance_id=instance_id, host=host[:200], pid=pid, started_at=at, heartbeat_at=at,
                               expires_at=at + lease))


def renew(session: Session, instance_id: str, *, at: datetime, lease: timedelta) -> bool:
    """Extends a lease that has not expired; False when it expired or was removed (its work may be recovered)."""
    result = session.execute(
        update(ServerLeaseRow)
        .where(ServerLeaseRow.instance_id == instance_id, ServerLeaseRow.expires_at > at)
        .values(heartbeat_at=at, expires_at=at + lease)
    )
    return affected_rows(result) == 1


def release(session: Session, instance_id: str) -> None:
    session.execute(delete(ServerLeaseRow).where(ServerLeaseRow.instance_id == instance_id))


def live_ids(at: datetime) -> ScalarSelect[str]:
    """The instance ids of the leases live at `at`, as a scalar subquery for IN / NOT IN."""
    return select(ServerLeaseRow.instance_id).where(ServerLeaseRow.expires_at > at).scalar_subquery()


def orphaned(column: SQLColumnExpression[str | None], at: datetime) -> ColumnElement[bool]:
    """`column` (an owner id) names no live server at `at`."""
    return or_(column.is_(None), column.not_in(live_ids(at)))


def live(session: Session, at: datetime) -> set[str]:
    return set(session.scalars(select(ServerLeaseRow.instance_id).where(ServerLeaseRow.expires_at > at)))


def on_node(session: Session, node: str) -> list[tuple[str, int]]:
    """(instance_id, pid) of the leases taken on this node (same host, boot and pid namespace)."""
    return [(r.instance_id, r.pid) for r in session.scalars(select(ServerLeaseRow).where(ServerLeaseRow.host == node))]


def expire(session: Session, instance_id: str, at: datetime) -> bool:
    """Ends a lease now (its process is known to be gone)."""
    result = session.execute(update(ServerLeaseRow).where(ServerLeaseRow.instance_id == instance_id,
                                                          ServerLeaseRow.expires_at > at).values(expires_at=at))
    return affected_rows(result) == 1


def remove_expired(session: Session, at: datetime) -> int:
    """Drops leases past their expiry (after their work was recovered)."""
    return affected_rows(session.execute(delete(ServerLeaseRow).where(ServerLeaseRow.expires_at <= at)))
