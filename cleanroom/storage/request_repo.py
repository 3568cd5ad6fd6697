"""Idempotent requests: the claim on a (principal, method, request_id) and its first answer."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import ColumnElement, Table, bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlalchemy.orm import Session

from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.idempotency import RequestKey as RequestKey  # re-exported: the key of each stored claim
from cleanroom.storage import lease_repo
from cleanroom.storage.clock import now
from cleanroom.storage.db import DriverReads, affected_rows, first_row, insert_ignoring_duplicates
from cleanroom.storage.tables import IdempotencyRow


def claim_request(session: Session, key: RequestKey, fingerprint: str, owner: str | None = None) -> IdempotencyRow | None:
    """Inserts an in-flight marker; returns the existing record instead when the id was seen."""
    existing = session.get(IdempotencyRow, (key.principal_id, key.method, key.request_id))
    if existing is not None:
        return existing
    try:
        with session.begin_nested():
            session.add(
                IdempotencyRow(
                    principal_id=key.principal_id,
                    method=key.method,
                    request_id=key.request_id,
                    fingerprint=fingerprint,
                    response=None,
                    created_at=now(),
                    owner=owner,
                )
            )
    except DbIntegrityError:
        raise CleanroomError(ErrorCode.REQUEST_IN_PROGRESS, "a request with this request_id is in progress") from None
    return None


def complete_request(session: Session, key: RequestKey, response: bytes) -> None:
    session.execute(
        update(IdempotencyRow)
        .where(
            IdempotencyRow.principal_id == key.principal_id,
            IdempotencyRow.method == key.method,
            IdempotencyRow.request_id == key.request_id,
        )
        .values(response=response)
    )


_STORED_REQUEST = select(IdempotencyRow.fingerprint, IdempotencyRow.response).where(
    IdempotencyRow.principal_id == bindparam("principal_id"),
    IdempotencyRow.method == bindparam("method"),
    IdempotencyRow.request_id == bindparam("request_id"),
)


def stored_request(source: Session | DriverReads, key: RequestKey) -> tuple[str, bytes | None] | None:
    """(fingerprint, response) of a request_id seen before; one indexed read with a prepared statement."""
    row = first_row(source, _STORED_REQUEST, {"principal_id": key.principal_id, "method": key.method,
                                               "request_id": key.request_id})
    return None if row is None else (row[0], None if row[1] is None else bytes(row[1]))


def store_answered(session: Session, answered: Sequence[tuple[RequestKey, str, bytes]]) -> None:
    """Records first answers written after the fact (key, fingerprint, response), as one statement;
    a key already recorded keeps its first answer."""
    if not answered:
        return
    statement = insert_ignoring_duplicates(session, cast(Table, IdempotencyRow.__table__))
    at = now()
    session.execute(statement, [
        {"principal_id": key.principal_id, "method": key.method, "request_id": key.request_id,
         "fingerprint": fingerprint, "response": response, "created_at": at}
        for key, fingerprint, response in answered
    ])


def release_request(session: Session, key: RequestKey) -> None:
    session.execute(
        delete(IdempotencyRow).where(
            IdempotencyRow.principal_id == key.principal_id,
            IdempotencyRow.method == key.method,
            IdempotencyRow.request_id == key.request_id,
            IdempotencyRow.response.is_(None),
        )
    )


def release_all_in_flight(session: Session, orphaned_at: datetime | None = None) -> int:
    """Markers left by a crash would block retries forever. With `orphaned_at`, only the claims of
    servers holding no live lease then go (a live peer's call is still in flight)."""
    condition: ColumnElement[bool] = IdempotencyRow.response.is_(None)
    if orphaned_at is not None:
        condition = condition & lease_repo.orphaned(IdempotencyRow.owner, orphaned_at)
    return affected_rows(session.execute(delete(IdempotencyRow).where(condition)))
