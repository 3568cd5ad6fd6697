"""Datasets: their declared schema and intake report, their wrapped data keys, and shredding."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NotRequired, TypedDict

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cleanroom.domain import deid
from cleanroom.domain.datasets import Dataset, IntakeReport
from cleanroom.domain.streams import StreamDescription, StreamIntakeSummary
from cleanroom.storage.clock import now
from cleanroom.storage.db import affected_rows
from cleanroom.storage.tables import DatasetRow

_RULES: dict[str, type[deid.Generalization]] = {
    cls.__name__: cls for cls in (deid.AgeBand, deid.DateTruncation, deid.PrefixTruncation, deid.Suppress)
}


class ColumnJson(TypedDict):
    """One declared column as `datasets.columns_json` holds it."""

    name: str
    type: str  # ColumnType name
    role: str  # ColumnRole name
    rule: dict[str, Any] | None  # {"kind": rule class name, **its fields}
    label_classes: NotRequired[int]  # absent in rows stored before it existed
    categories: NotRequired[list[str]]  # likewise (migration 0007)


def _column_to_json(column: deid.ColumnSpec) -> ColumnJson:
    rule = column.generalization
    return {
        "name": column.name,
        "type": column.type.name,
        "role": column.role.name,
        "rule": None if rule is None else {"kind": type(rule).__name__, **dataclasses.asdict(rule)},
        "label_classes": column.label_classes,
        "categories": list(column.categories),
    }


def column_from_json(data: ColumnJson) -> deid.ColumnSpec:
    """A stored column description; keys added by later migrations may be missing (older rows)."""
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
        label_classes=int(data.get("label_classes", 0)),
        categories=tuple(str(c) for c in data.get("categories", ())),
    )


def _report_to_json(report: IntakeReport) -> str:
    return json.dumps(dataclasses.asdict(report), sort_keys=True)


def _report_from_json(text: str) -> IntakeReport:
    data = json.loads(text)
    for key in ("dropped_columns", "pseudonymized_columns", "notes"):
        data[key] = tuple(data[key])
    data["generalized_columns"] = tuple(tuple(pair) for pair in data["generalized_columns"])
    stream = data.pop("stream", None)  # absent in reports stored before streams existed
    if stream is not None:
        stream["channels"] = tuple(tuple(c) for c in stream["channels"])
        data["stream"] = StreamIntakeSummary(**stream)
    return IntakeReport(**data)


def _stream_to_json(stream: StreamDescription | None) -> str:
    return "" if stream is None else json.dumps(stream.to_json(), sort_keys=True)


def _stream_from_json(text: str) -> StreamDescription | None:
    return StreamDescription.from_json(json.loads(text)) if text else None


def add_dataset(session: Session, dataset: Dataset, wrapped_key: bytes) -> None:
    session.add(
        DatasetRow(
            id=dataset.id,
            owner_id=dataset.owner_id,
            organisation_id=dataset.organisation_id,
            display_name=dataset.display_name,
            description=dataset.description,
            columns_json=json.dumps([_column_to_json(c) for c in dataset.columns]),
            k_anonymity=dataset.k_anonymity,
            row_count=dataset.row_count,
            patient_count=dataset.patient_count,
            report_json=_report_to_json(dataset.report),
            ciphertext_sha256=dataset.ciphertext_sha256,
            stream_json=_stream_to_json(dataset.stream),
            wrapped_key=wrapped_key,
            created_at=dataset.created_at,
        )
    )


def _dataset(row: DatasetRow) -> Dataset:
    columns: list[ColumnJson] = json.loads(row.columns_json)
    return Dataset(
        id=row.id,
        owner_id=row.owner_id,
        organisation_id=row.organisation_id,
        display_name=row.display_name,
        description=row.description,
        columns=tuple(column_from_json(c) for c in columns),
        k_anonymity=row.k_anonymity,
        row_count=row.row_count,
        patient_count=row.patient_count,
        report=_report_from_json(row.report_json),
        ciphertext_sha256=row.ciphertext_sha256,
        created_at=row.created_at,
        stream=_stream_from_json(row.stream_json),
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
    return affected_rows(result) == 1


def live_wrapped_keys(session: Session) -> list[tuple[str, bytes]]:
    rows = session.execute(
        select(DatasetRow.id, DatasetRow.wrapped_key).where(DatasetRow.wrapped_key.is_not(None))
    )
    return [(r.id, r.wrapped_key) for r in rows if r.wrapped_key is not None]


def set_wrapped_dataset_key(session: Session, dataset_id: str, wrapped_key: bytes) -> None:
    session.execute(update(DatasetRow).where(DatasetRow.id == dataset_id).values(wrapped_key=wrapped_key))


def owned_dataset_ids(session: Session, owner_id: str) -> set[str]:
    """Including deleted ones: a hospital keeps reading the audit trail of what it deleted."""
    return set(session.scalars(select(DatasetRow.id).where(DatasetRow.owner_id == owner_id)))


def organisation_dataset_ids(session: Session, organisation_id: str, *, deleted_too: bool = False) -> set[str]:
    """Live datasets whose owner belongs to `organisation_id` (its officers govern them); with
    `deleted_too`, deleted ones as well (a hospital keeps reading their ledger and audit trail)."""
    query = select(DatasetRow.id).where(DatasetRow.organisation_id == organisation_id)
    if not deleted_too:
        query = query.where(DatasetRow.deleted_at.is_(None))
    return set(session.scalars(query))
