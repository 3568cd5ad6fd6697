"""Model versions in the database."""

from __future__ import annotations

import json

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cleanroom.domain.model_versions import ModelState, ModelVersion
from cleanroom.storage.tables import ModelRow


def add_model(session: Session, version: ModelVersion, wrapped_key: bytes | None) -> None:
    session.add(ModelRow(
        id=version.id, owner_id=version.owner_id, name=version.name, version=version.version, state=version.state.value,
        package_sha256=version.package_sha256, task=version.task, num_classes=version.num_classes,
        input_shape_json=json.dumps(list(version.input_shape)), trainable_json=json.dumps(list(version.trainable)),
        report_json=json.dumps(version.report, sort_keys=True, default=str), wrapped_key=wrapped_key,
        created_at=version.created_at,
    ))


def _version(row: ModelRow) -> ModelVersion:
    return ModelVersion(
        id=row.id, owner_id=row.owner_id, name=row.name, version=row.version, state=ModelState(row.state),
        package_sha256=row.package_sha256, task=row.task, num_classes=row.num_classes,
        input_shape=tuple(json.loads(row.input_shape_json)), trainable=tuple(json.loads(row.trainable_json)),
        report=json.loads(row.report_json), created_at=row.created_at,
    )


def get_model(session: Session, model_id: str) -> ModelVersion | None:
    row = session.get(ModelRow, model_id)
    return _version(row) if row else None


def list_models(session: Session, *, owner_id: str, after_id: str | None, limit: int) -> list[ModelVersion]:
    query = select(ModelRow).where(ModelRow.owner_id == owner_id).order_by(ModelRow.id).limit(limit)
    if after_id is not None:
        query = query.where(ModelRow.id > after_id)
    return [_version(r) for r in session.scalars(query)]


def wrapped_model_key(session: Session, model_id: str) -> bytes | None:
    row = session.get(ModelRow, model_id)
    return row.wrapped_key if row and row.state == ModelState.ACCEPTED.value else None


def live_wrapped_keys(session: Session) -> list[tuple[str, bytes]]:
    rows = session.execute(select(ModelRow.id, ModelRow.wrapped_key).where(ModelRow.wrapped_key.is_not(None)))
    return [(r.id, r.wrapped_key) for r in rows]


def set_wrapped_key(session: Session, model_id: str, wrapped_key: bytes) -> None:
    session.execute(update(ModelRow).where(ModelRow.id == model_id).values(wrapped_key=wrapped_key))
