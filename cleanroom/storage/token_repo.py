"""Issued bearer tokens (their SHA-256 only), with expiry and revocation (migration 0012)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from cleanroom.domain.credentials import Token
from cleanroom.domain.identity import Principal, Role
from cleanroom.storage.db import DriverReads, first_row
from cleanroom.storage.tables import PrincipalRow, TokenRow


def add_token(session: Session, token: Token, token_hash: str) -> None:
    session.add(TokenRow(id=token.id, principal_id=token.principal_id, token_hash=token_hash, created_at=token.created_at,
                         expires_at=token.expires_at, revoked_at=token.revoked_at, created_by=token.created_by))


# Every authenticated call runs this once (no cache: a revocation must hold on the next call, on
# every replica), so it is one prepared statement, on the driver's cursor on the hot path.
_BY_HASH = (
    select(TokenRow.id, TokenRow.principal_id, TokenRow.created_at, TokenRow.expires_at, TokenRow.revoked_at,
           TokenRow.created_by, PrincipalRow.display_name, PrincipalRow.role, PrincipalRow.created_at,
           PrincipalRow.organisation_id)
    .join(PrincipalRow, PrincipalRow.id == TokenRow.principal_id)
    .where(TokenRow.token_hash == bindparam("token_hash"))
)


def _utc(value: Any) -> datetime:
    """A timestamp as the driver returns it: PostgreSQL an aware datetime, SQLite the text SQLAlchemy wrote."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _maybe_utc(value: Any) -> datetime | None:
    return None if value is None else _utc(value)


def token_by_hash(source: Session | DriverReads, token_hash: str) -> tuple[Token, Principal] | None:
    row = first_row(source, _BY_HASH, {"token_hash": token_hash})
    if row is None:
        return None
    token_id, principal_id, created, expires, revoked, created_by, name, role, principal_created, organisation = row
    token = Token(token_id, principal_id, _utc(created), _maybe_utc(expires), _maybe_utc(revoked), created_by)
    principal = Principal(principal_id, name, Role(role), _utc(principal_created), organisation)
    return token, principal


def _token(row: TokenRow) -> Token:
    return Token(row.id, row.principal_id, row.created_at, row.expires_at, row.revoked_at, row.created_by)


def get_token(session: Session, token_id: str) -> Token | None:
    row = session.get(TokenRow, token_id)
    return _token(row) if row else None


def list_tokens(session: Session, *, principal_id: str | None, after_id: str | None, limit: int) -> list[Token]:
    query = select(TokenRow).order_by(TokenRow.id).limit(limit)
    if principal_id is not None:
        query = query.where(TokenRow.principal_id == principal_id)
    if after_id is not None:
        query = query.where(TokenRow.id > after_id)
    return [_token(r) for r in session.scalars(query)]


def revoke(session: Session, token_ids: list[str], at: datetime) -> list[str]:
    """Revokes those of `token_ids` not yet revoked; returns the ids this call revoked. One
    conditional update: of two revocations racing, only one stamps (and so audits) a token."""
    if not token_ids:
        return []
    changed = session.execute(update(TokenRow).where(TokenRow.id.in_(token_ids), TokenRow.revoked_at.is_(None))
                              .values(revoked_at=at).returning(TokenRow.id))
    return sorted(changed.scalars())


def principal_token_ids(session: Session, principal_id: str) -> list[str]:
    return list(session.scalars(select(TokenRow.id).where(TokenRow.principal_id == principal_id).order_by(TokenRow.id)))


def live_admin_tokens(session: Session, now: datetime) -> int:
    """Admin tokens that work now: neither revoked nor expired."""
    query = (select(func.count()).select_from(TokenRow).join(PrincipalRow, PrincipalRow.id == TokenRow.principal_id)
             .where(PrincipalRow.role == Role.ADMIN.value, TokenRow.revoked_at.is_(None))
             .where((TokenRow.expires_at.is_(None)) | (TokenRow.expires_at > now)))
    return int(session.scalar(query) or 0)
