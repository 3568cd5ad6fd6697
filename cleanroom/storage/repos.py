"""Repositories: the only place that turns table rows into domain objects and back."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlalchemy.orm import Session

from cleanroom.domain import deid
from cleanroom.domain.datasets import Dataset, IntakeReport
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.identity import Principal, Role
from cleanroom.storage import lease_repo
from cleanroom.storage.db import DriverReads, first_row
from cleanroom.storage.tables import DatasetRow, IdempotencyRow, PrincipalRow, SecretRow

_RULES = {cls.__name__: cls for cls in (deid.AgeBand, deid.DateTruncation, deid.PrefixTruncation, deid.Suppress)}


def now() -> datetime:
    return datetime.now(UTC)


# --- principals -----------------------------------------------------------------------------


def add_principal(session: Session, principal: Principal, token_hash: str) -> None:
    session.add(
        PrincipalRow(
            id=principal.id,
            display_name=principal.display_name,
            role=principal.role.value,
            token_hash=token_hash,
            created_at=principal.created_at,
        )
    )


def _principal(row: PrincipalRow) -> Principal:
    return Principal(row.id, row.display_name, Role(row.role), row.created_at)


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


# --- datasets --------------------------------------------------------------------------------


def _column_to_json(column: deid.ColumnSpec) -> dict[str, object]:
    rule = column.generalization
    return {
        "name": column.name,
        "type": column.type.name,
        "role": column.role.name,
        "rule": None if rule is None else {"kind": type(rule).__name__, **dataclasses.asdict(rule)},
        "label_classes": column.label_classes,
        "categories": list(column.categories),
    }


def _column_from_json(data: dict[str, object]) -> deid.ColumnSpec:
    rule_data = data["rule"]
    rule = None
    if isinstance(rule_data, dict):
        fields = dict(rule_data)
        rule = _RULES[str(fields.pop("kind"))](**fields)
    return deid.ColumnSpec(
        name=str(data["name"]),
        type=deid.ColumnType[str(data["type"])],
        role=deid.ColumnRole[str(data["role"])],
        generalization=rule,
        label_classes=int(data.get("label_classes", 0)),  # absent in rows stored before it existed
        categories=tuple(str(c) for c in data.get("categories", ())),  # likewise (migration 0007)
    )


def _report_to_json(report: IntakeReport) -> str:
    return json.dumps(dataclasses.asdict(report), sort_keys=True)


def _report_from_json(text: str) -> IntakeReport:
    data = json.loads(text)
    for key in ("dropped_columns", "pseudonymized_columns", "notes"):
        data[key] = tuple(data[key])
    data["generalized_columns"] = tuple(tuple(pair) for pair in data["generalized_columns"])
    return IntakeReport(**data)


def add_dataset(session: Session, dataset: Dataset, wrapped_key: bytes) -> None:
    session.add(
        DatasetRow(
            id=dataset.id,
            owner_id=dataset.owner_id,
            display_name=dataset.display_name,
            description=dataset.description,
            columns_json=json.dumps([_column_to_json(c) for c in dataset.columns]),
            k_anonymity=dataset.k_anonymity,
            row_count=dataset.row_count,
            patient_count=dataset.patient_count,
            report_json=_report_to_json(dataset.report),
            ciphertext_sha256=dataset.ciphertext_sha256,
            wrapped_key=wrapped_key,
            created_at=dataset.created_at,
        )
    )


def _dataset(row: DatasetRow) -> Dataset:
    return Dataset(
        id=row.id,
        owner_id=row.owner_id,
        display_name=row.display_name,
        description=row.description,
        columns=tuple(_column_from_json(c) for c in json.loads(row.columns_json)),
        k_anonymity=row.k_anonymity,
        row_count=row.row_count,
        patient_count=row.patient_count,
        report=_report_from_json(row.report_json),
        ciphertext_sha256=row.ciphertext_sha256,
        created_at=row.created_at,
    )


def get_dataset(session: Session, dataset_id: str) -> Dataset | None:
    row = session.get(DatasetRow, dataset_id)
    if row is None or row.deleted_at is not None:
        return None
    return _dataset(row)


def list_datasets(
    session: Session, *, owner_id: str | None, after_id: str | None, limit: int, ids: set[str] | None = None
) -> list[Dataset]:
    query = select(DatasetRow).where(DatasetRow.deleted_at.is_(None)).order_by(DatasetRow.id).limit(limit)
    if owner_id is not None:
        query = query.where(DatasetRow.owner_id == owner_id)
    if ids is not None:
        query = query.where(DatasetRow.id.in_(ids))
    if after_id is not None:
        query = query.where(DatasetRow.id > after_id)
    return [_dataset(r) for r in session.scalars(query)]


def wrapped_dataset_key(session: Session, dataset_id: str) -> bytes | None:
    row = session.get(DatasetRow, dataset_id)
    return None if row is None or row.deleted_at is not None else row.wrapped_key


def shred_dataset(session: Session, dataset_id: str) -> bool:
    """Destroys the wrapped key and marks the row deleted; the tombstone keeps later references valid."""
    result = session.execute(
        update(DatasetRow)
        .where(DatasetRow.id == dataset_id, DatasetRow.deleted_at.is_(None))
        .values(wrapped_key=None, deleted_at=now())
    )
    return result.rowcount == 1


def live_wrapped_keys(session: Session) -> list[tuple[str, bytes]]:
    rows = session.execute(
        select(DatasetRow.id, DatasetRow.wrapped_key).where(DatasetRow.wrapped_key.is_not(None))
    )
    return [(r.id, r.wrapped_key) for r in rows]


def set_wrapped_dataset_key(session: Session, dataset_id: str, wrapped_key: bytes) -> None:
    session.execute(update(DatasetRow).where(DatasetRow.id == dataset_id).values(wrapped_key=wrapped_key))


def owned_dataset_ids(session: Session, owner_id: str) -> set[str]:
    """Including deleted ones: a hospital keeps reading the audit trail of what it deleted."""
    return set(session.scalars(select(DatasetRow.id).where(DatasetRow.owner_id == owner_id)))


# --- secrets ---------------------------------------------------------------------------------


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


# --- idempotency -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RequestKey:
    principal_id: str
    method: str
    request_id: str


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
    statement = _insert_ignoring_duplicates(session, IdempotencyRow)
    at = now()
    session.execute(statement, [
        {"principal_id": key.principal_id, "method": key.method, "request_id": key.request_id,
         "fingerprint": fingerprint, "response": response, "created_at": at}
        for key, fingerprint, response in answered
    ])


_INSERTS_IGNORING_DUPLICATES: dict[tuple[str, str], Any] = {}


def _insert_ignoring_duplicates(session: Session, table: type) -> Any:
    """INSERT … ON CONFLICT DO NOTHING in the dialect of the session's database (built once)."""
    dialect = session.get_bind().dialect.name
    key = (dialect, table.__name__)
    if key not in _INSERTS_IGNORING_DUPLICATES:
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        _INSERTS_IGNORING_DUPLICATES[key] = dialect_insert(table.__table__).on_conflict_do_nothing()  # type: ignore[attr-defined]
    return _INSERTS_IGNORING_DUPLICATES[key]


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
    condition = IdempotencyRow.response.is_(None)
    if orphaned_at is not None:
        condition = condition & lease_repo.orphaned(IdempotencyRow.owner, orphaned_at)
    return session.execute(delete(IdempotencyRow).where(condition)).rowcount
