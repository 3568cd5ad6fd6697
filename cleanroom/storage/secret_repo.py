"""Service secrets (e.g. the pseudonymisation root key), stored wrapped by the KEK."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cleanroom.storage.db import Database
from cleanroom.storage.tables import SecretRow


def get_secret(session: Session, name: str) -> bytes | None:
    row = session.get(SecretRow, name)
    return row.wrapped if row else None


def put_secret(session: Session, name: str, wrapped: bytes) -> None:
    row = session.get(SecretRow, name)
    if row is None:
        session.add(SecretRow(name=name, wrapped=wrapped))
    else:
        row.wrapped = wrapped


def create_secret(db: Database, name: str, wrapped: bytes) -> bool:
    """Stores a new secret in a transaction of its own; False when one of that name exists (a
    replica starting beside this one stored it first): the primary key makes the claim atomic on
    SQLite and PostgreSQL alike, so every replica ends up with the one that was stored."""
    try:
        with db.transaction() as session:
            session.add(SecretRow(name=name, wrapped=wrapped))
    except IntegrityError:
        return False
    return True


def all_secrets(session: Session) -> list[tuple[str, bytes]]:
    return [(r.name, r.wrapped) for r in session.scalars(select(SecretRow))]
