"""Model submission use cases: stream the package in, run sandboxed intake, store the version.

The submitted zip and the intake work directory hold the manufacturer's own code and weights, no
patient data, so they sit on disk in a private directory while intake runs and are removed after.
The validated program is sealed under a key of its own, like a dataset.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cleanroom import crypto
from cleanroom.datasets.upload_stream import Trailer, UploadStream
from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request
from cleanroom.domain.identity import Principal
from cleanroom.domain.model_versions import ModelState, ModelVersion, new_model_id, parse_model_name
from cleanroom.domain.ownership import owned_or_not_found
from cleanroom.domain.pagination import PageRequest
from cleanroom.identity.keyring import KeyService, model_context
from cleanroom.models.intake.service import IntakeOutcome, ModelIntake
from cleanroom.observability.metrics import Metrics
from cleanroom.storage import audit_repo, clock, model_repo
from cleanroom.storage.blobs import BlobStore
from cleanroom.storage.db import Database

log = logging.getLogger(__name__)

NOT_FOUND = "model not found"


class ModelVersionService:
    def __init__(self, db: Database, blobs: BlobStore, keys: KeyService, intake: ModelIntake, metrics: Metrics, work_root: Path) -> None:
        self._db = db
        self._blobs = blobs
        self._keys = keys
        self._intake = intake
        self._metrics = metrics
        self._work_root = work_root

    def submit(self, owner: Principal, parts: Iterator[bytes | Trailer]) -> ModelVersion:
        self._work_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        workdir = Path(tempfile.mkdtemp(prefix="intake-", dir=self._work_root))
        try:
            package = self._receive(parts, workdir / "package.zip")
            outcome = self._intake.run(package, workdir / "run")
            version = self._store(owner, outcome)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        self._count(outcome)
        return version

    def _receive(self, parts: Iterator[bytes | Trailer], target: Path) -> Path:
        stream = UploadStream(parts, max_bytes=self._intake.limits.max_zip_bytes)
        with target.open("wb") as out:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
        stream.verify_trailer()
        return target

    def _store(self, owner: Principal, outcome: IntakeOutcome) -> ModelVersion:
        manifest = outcome.manifest
        version = ModelVersion(
            id=new_model_id(), owner_id=owner.id,
            name=manifest.name if manifest else "", version=manifest.version if manifest else "",
            state=ModelState.ACCEPTED if outcome.accepted else ModelState.REJECTED,
            package_sha256=outcome.package_digest or "", task=manifest.task.value if manifest else "",
            num_classes=(manifest.num_classes or 0) if manifest else 0,
            input_shape=tuple(manifest.input_shape) if manifest else (),
            trainable=tuple(outcome.report.trainable), report=outcome.report.to_dict(), created_at=clock.now(),
        )
        wrapped = self._seal_artifact(version.id, outcome.artifact_path) if outcome.accepted else None
        try:
            with self._db.transaction() as session:
                model_repo.add_model(session, version, wrapped)
                audit_repo.append(session, actor=owner.resource_name, action="model.submit", target=version.resource_name,
                                  details={"state": version.state.value, "package_sha256": version.package_sha256,
                                           "reasons": outcome.report.reason_codes})
        except BaseException:
            self._blobs.delete(version.id)
            raise
        return version

    def _seal_artifact(self, model_id: str, artifact: Path | None) -> bytes:
        assert artifact is not None
        key = crypto.new_data_key()
        with self._blobs.create(model_id) as pending, artifact.open("rb") as source:
            writer = crypto.SealedWriter(pending.file, key, model_id)
            shutil.copyfileobj(source, writer, 1 << 20)
            writer.close()
            pending.commit()
        return self._keys.wrap_key(model_context(model_id), key)

    def _count(self, outcome: IntakeOutcome) -> None:
        self._metrics.intake_submissions.labels("accepted" if outcome.accepted else "rejected").inc()
        for code in outcome.report.reason_codes:
            self._metrics.intake_rejections.labels(code).inc()

    def get(self, principal: Principal, name: str) -> ModelVersion:
        model_id = parse_model_name(name)
        if model_id is None:
            raise bad_request("name must look like models/{id}", FieldViolation("name", "not a model name"))
        with self._db.read() as session:
            version = model_repo.get_model(session, model_id)
        return owned_or_not_found(version, principal.id, NOT_FOUND)

    def list(self, principal: Principal, page: PageRequest) -> list[ModelVersion]:
        with self._db.read() as session:
            return model_repo.list_models(session, owner_id=principal.id, after_id=page.after_id, limit=page.size)

    def artifact_bytes(self, model_id: str) -> bytes:
        """Service-internal: the validated program, decrypted in memory for a phase-B worker."""
        with self._db.read() as session:
            wrapped = model_repo.wrapped_model_key(session, model_id)
        if wrapped is None:
            raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
        key = self._keys.unwrap_key(model_context(model_id), wrapped)
        with self._blobs.open(model_id) as sealed:
            return crypto.SealedReader(sealed, key, model_id).read()
