"""Console logins (migration 0013): one per principal, looked up by username."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cleanroom.domain.console_logins import ConsoleLogin
from cleanroom.storage.tables import ConsoleLoginRow


def _login(row: ConsoleLoginRow) -> ConsoleLogin:
    return ConsoleLogin(row.id, row.username, row.principal_id, row.created_at, row.password_hash is not None)


def by_username(session: Session, username: str, *, for_update: bool = False) -> ConsoleLoginRow | None:
    query = select(ConsoleLoginRow).where(ConsoleLoginRow.username == username)
    return session.scalars(query.with_for_update() if for_update else query).first()


def by_principal(session: Session, principal_id: str, *, for_update: bool = False) -> ConsoleLoginRow | None:
    query = select(ConsoleLoginRow).where(ConsoleLoginRow.principal_id == principal_id)
    return session.scalars(query.with_for_update() if for_update else query).first()


def add(session: Session, row: ConsoleLoginRow) -> None:
    session.add(row)
    session.flush()


def public(row: ConsoleLoginRow) -> ConsoleLogin:
    return _login(row)
