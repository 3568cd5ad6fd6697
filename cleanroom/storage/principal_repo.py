"""Principals and the hashes of their tokens."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cleanroom.domain.identity import Principal, Role
from cleanroom.storage.tables import PrincipalRow


def add_principal(session: Session, principal: Principal, token_hash: str) -> None:
    session.add(
        PrincipalRow(
            id=principal.id,
            display_name=principal.display_name,
            role=principal.role.value,
            token_hash=token_hash,
            created_at=principal.created_at,
            organisation_id=principal.organisation_id,
        )
    )


def _principal(row: PrincipalRow) -> Principal:
    return Principal(row.id, row.display_name, Role(row.role), row.created_at, row.organisation_id)


def principal_by_token_hash(session: Session, token_hash: str) -> Principal | None:
    row = session.scalar(select(PrincipalRow).where(PrincipalRow.token_hash == token_hash))
    return _principal(row) if row else None


def get_principal(session: Session, principal_id: str) -> Principal | None:
    row = session.get(PrincipalRow, principal_id)
    return _principal(row) if row else None


def list_principals(session: Session, *, after_id: str | None, limit: int) -> list[Principal]:
    query = select(PrincipalRow).order_by(PrincipalRow.id).limit(limit)
    if after_id is not None:
        query = query.where(PrincipalRow.id > after_id)
    return [_principal(r) for r in session.scalars(query)]


def count_admins(session: Session) -> int:
    return len(session.scalars(select(PrincipalRow.id).where(PrincipalRow.role == Role.ADMIN.value)).all())


def organisation_principal_ids(session: Session, organisation_id: str) -> set[str]:
    return set(session.scalars(select(PrincipalRow.id).where(PrincipalRow.organisation_id == organisation_id)))
