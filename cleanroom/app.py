"""The one module that wires the service together from a ServerConfig."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cleanroom.api.idempotency import Idempotency
from cleanroom.attestation import Enclave
from cleanroom.config import ServerConfig
from cleanroom.crypto import LocalKeyFileProvider
from cleanroom.datasets.service import DatasetService
from cleanroom.intake.service import ModelIntake
from cleanroom.keys import KeyService
from cleanroom.metrics import Metrics
from cleanroom.modelversions.service import ModelVersionService
from cleanroom.principals import PrincipalService
from cleanroom.privacy.approvals import ApprovalService
from cleanroom.privacy.audit import AuditService
from cleanroom.privacy.budgets import BudgetService
from cleanroom.privacy.ledger import Ledger, budget_snapshots
from cleanroom.sandbox import choose_launcher
from cleanroom.sandbox.base import SandboxPolicy
from cleanroom.sandbox.metered import MeteredLauncher
from cleanroom.storage import repos
from cleanroom.storage.blobs import BlobStore
from cleanroom.storage.db import Database, migrate

log = logging.getLogger(__name__)


@dataclass
class App:
    config: ServerConfig
    db: Database
    keys: KeyService
    principals: PrincipalService
    datasets: DatasetService
    idempotency: Idempotency
    ledger: Ledger
    budgets: BudgetService
    approvals: ApprovalService
    audit: AuditService
    metrics: Metrics
    enclave: Enclave
    models: ModelVersionService

    def close(self) -> None:
        self.db.dispose()


def build_app(config: ServerConfig) -> App:
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = Database(config.database_url)
    migrate(db.engine)
    keys = KeyService(db, LocalKeyFileProvider(config.state_dir))
    blobs = BlobStore(config.blob_dir)
    metrics = Metrics()
    datasets = DatasetService(
        db, blobs, keys, max_upload_bytes=config.max_upload_bytes, default_k=config.k_anonymity, metrics=metrics
    )
    ledger = Ledger(db, metrics)
    metrics.watch_budgets(lambda: budget_snapshots(db))
    return App(
        config, db, keys, PrincipalService(db, keys), datasets, Idempotency(db),
        ledger, BudgetService(db), ApprovalService(db, ledger), AuditService(db), metrics,
        Enclave(config.state_dir, db, ledger, metrics, SandboxPolicy()),
        ModelVersionService(db, blobs, keys, model_intake(config, metrics), metrics, config.work_dir),
    )


def model_intake(config: ServerConfig, metrics: Metrics) -> ModelIntake:
    """Phase A runs where the configuration says; the state directory is never mountable."""
    if config.sandbox == "kubernetes":
        from cleanroom.sandbox.kubernetes import KubernetesLauncher

        launcher = KubernetesLauncher.from_cluster(image=config.worker_image, namespace=config.worker_namespace,
                                                   purpose="intake", work_root=config.job_volume, metrics=metrics)
        return ModelIntake(launcher=launcher, launcher_reason="Kubernetes Jobs (RuntimeClass gvisor)")
    metered = MeteredLauncher(lambda: choose_launcher(config.sandbox, deny=[config.state_dir]), metrics, "intake")
    return ModelIntake(launcher=metered, launcher_reason="chosen on first use")
