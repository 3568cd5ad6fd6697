"""Service secrets (e.g. the pseudonymisation root key), stored wrapped by the KEK."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

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


def all_secrets(session: Session) -> list[tuple[str, bytes]]:
    return [(r.name, r.wrapped) for r in session.scalars(select(SecretRow))]
