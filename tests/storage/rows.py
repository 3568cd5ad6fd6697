"""Rows written straight into the tables, for tests of what start-up and `admin gc` keep."""

from __future__ import annotations

import json

from sqlalchemy.orm import Session

from cleanroom.storage import clock
from cleanroom.storage.tables import JobRow, ModelRow


def add_released_training_job(session: Session, *, owner_id: str, model_id: str, job_id: str,
                              artifacts: list[tuple[str, str]]) -> None:
    """An accepted model version and a released training job whose artefacts (name, blob id) rows reference."""
    session.execute(ModelRow.__table__.insert().values(
        id=model_id, owner_id=owner_id, name="m", version="1", state="accepted", package_sha256="0" * 64, task="t",
        num_classes=2, input_shape_json="[30]", trainable_json="[]", report_json="{}", wrapped_key=b"k",
        created_at=clock.now()))
    session.execute(JobRow.__table__.insert().values(
        id=job_id, kind="training", owner_id=owner_id, model_id=model_id, dataset_id="d", spec_json="{}",
        state="released", failure="none", cancel_requested=False, created_at=clock.now(),
        artifacts_json=json.dumps([{"name": name, "blob": blob} for name, blob in artifacts])))
