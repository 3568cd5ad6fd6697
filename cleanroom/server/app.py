"""The one module that wires the service together from a ServerConfig."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cleanroom.attestation.enclave import Enclave
from cleanroom.crypto import LocalKeyFileProvider
from cleanroom.datasets.service import DatasetService
from cleanroom.identity.keyring import KeyService
from cleanroom.identity.principals import PrincipalService
from cleanroom.jobs.releases import ReleaseService
from cleanroom.jobs.runner import JobRunner
from cleanroom.jobs.service import JobService
from cleanroom.models.intake.service import ModelIntake
from cleanroom.models.versions import ModelVersionService
from cleanroom.notifications.audit_watch import WatchedAuditService
from cleanroom.notifications.notifier import Notifier
from cleanroom.observability.metrics import Metrics
from cleanroom.privacy.approvals import ApprovalService
from cleanroom.privacy.audit import AuditService
from cleanroom.privacy.budgets import BudgetService
from cleanroom.privacy.ledger import Ledger, budget_snapshots
from cleanroom.sandbox import backends
from cleanroom.sandbox.backends import Placement, StatisticsHost, Workload
from cleanroom.sandbox.base import SandboxLauncher, SandboxPolicy
from cleanroom.server.config import ServerConfig
from cleanroom.server.idempotency import Idempotency, JournalledIdempotency
from cleanroom.server.lease import ServerLease, utcnow
from cleanroom.statistics.allowance import Allowances
from cleanroom.statistics.pool import StatsWorkerPool
from cleanroom.statistics.service import StatsQueryService
from cleanroom.storage import identity, lease_repo, request_repo
from cleanroom.storage.blobs import BlobStore
from cleanroom.storage.db import Database, migrate
from cleanroom.storage.group_commit import GroupCommit

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class App:
    """The wired service: what the gRPC servicers (cleanroom/api/server.py) and the tools use.
    Built by build_app, by keyword."""

    config: ServerConfig
    db: Database
    keys: KeyService
    principals: PrincipalService
    datasets: DatasetService
    idempotency: Idempotency
    answered_idempotency: JournalledIdempotency   # for answers whose records trail them (statistics)
    ledger: Ledger
    budgets: BudgetService
    approvals: ApprovalService
    audit: AuditService
    metrics: Metrics
    enclave: Enclave
    models: ModelVersionService
    jobs: JobService
    runner: JobRunner
    stats: StatsQueryService
    stats_pool: StatsWorkerPool
    stats_journal: GroupCommit    # the trailing records of statistics answers
    releases: ReleaseService
    lease: ServerLease | None = None  # this process's lease on its work in flight (held once recover() ran)
    notifier: Notifier | None = None  # officer notifications; its thread starts with the gRPC server

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.stop()
        self.stats.close()  # closes allowances and writes trailing records while the database is open
        self.stats_pool.close()
        if self.lease is not None:
            self.lease.release()  # after the allowances are settled: peers recover what is left at once
        self.db.dispose()


def build_app(config: ServerConfig) -> App:
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    identity.check(config.database_url, config.blob_dir)  # before migrating creates a database beside the blobs
    db = Database(config.database_url)
    try:
        migrate(db.engine)
        identity.ensure(db, config.blob_dir)  # refuses a database and blob store that do not belong together
    except identity.StorageIdentityError:
        db.dispose()
        raise
    keys = KeyService(db, LocalKeyFileProvider(config.state_dir))
    lease = ServerLease(db, lease_seconds=config.lease_seconds)
    owner = lease.instance_id  # what this process has in flight carries it
    blobs = BlobStore(config.blob_dir, owner=owner)
    metrics = Metrics()
    placement = sandbox_placement(config, metrics)
    datasets = DatasetService(
        db, blobs, keys, max_upload_bytes=config.max_upload_bytes, default_k=config.k_anonymity, metrics=metrics
    )
    ledger = Ledger(db, metrics, owner=owner)
    metrics.watch_budgets(lambda: budget_snapshots(db))
    journal = GroupCommit(db, name="stats-records")
    allowances = Allowances(ledger, journal, queries=config.stats_allowance, idle_seconds=config.stats_allowance_idle)
    approvals = ApprovalService(db, ledger, release_held=allowances.release_dataset)
    policy = phase_b_policy(config)
    enclave = Enclave(config.state_dir, db, ledger, metrics, policy)
    models = ModelVersionService(db, blobs, keys, model_intake(config, placement), metrics, config.work_dir)
    jobs = JobService(db, approvals, ledger, blobs, keys, metrics)
    runner = JobRunner(db=db, jobs=jobs, ledger=ledger, enclave=enclave, models=models, blobs=blobs, keys=keys,
                       launcher=phase_b_launcher(config, placement), policy=policy, metrics=metrics,
                       work_dir=config.work_dir, concurrency=config.job_workers, owner=owner)
    stats_pool = stats_worker_pool(config, placement, enclave, keys, policy, metrics)
    stats = StatsQueryService(db=db, approvals=approvals, ledger=ledger, enclave=enclave, blobs=blobs, pool=stats_pool, metrics=metrics,
                              journal=journal, allowances=allowances)
    notifier = Notifier(db, config.notify, metrics, owner=owner)
    return App(
        config=config, db=db, keys=keys, principals=PrincipalService(db, keys), datasets=datasets,
        idempotency=Idempotency(db, owner), answered_idempotency=JournalledIdempotency(db, journal),
        ledger=ledger, budgets=BudgetService(db, release_held=allowances.release_dataset), approvals=approvals,
        audit=WatchedAuditService(db, on_break=notifier.tell_audit_break), metrics=metrics, enclave=enclave, models=models,
        jobs=jobs, runner=runner, stats=stats, stats_pool=stats_pool, stats_journal=journal, lease=lease, notifier=notifier,
        releases=ReleaseService(db, blobs, keys),
    )


def phase_b_policy(config: ServerConfig) -> SandboxPolicy:
    """The data sandbox's limits. Part of the enclave measurement: changing them changes the allow-list."""
    return SandboxPolicy(memory_bytes=6 << 30, max_processes=256, wall_seconds=config.job_timeout,
                         cpu_seconds=int(config.job_timeout * 4), max_output_bytes=1 << 30)


def sandbox_placement(config: ServerConfig, metrics: Metrics) -> Placement:
    """Where every workload's sandboxes go; the state directory is never mountable."""
    return Placement(deny=(config.state_dir,), worker_image=config.worker_image, worker_namespace=config.worker_namespace,
                     job_volume=config.job_volume, metrics=metrics)


def phase_b_launcher(config: ServerConfig, placement: Placement) -> SandboxLauncher:
    """Training and evaluation: where the configuration says ("auto": bubblewrap, see sandbox/backends.py)."""
    launcher, _ = backends.launcher_for(config.sandbox, Workload.TRAINING, placement)
    return launcher


def stats_worker_pool(config: ServerConfig, placement: Placement, enclave: Enclave, keys: KeyService, policy: SandboxPolicy,
                      metrics: Metrics) -> StatsWorkerPool:
    """Warm statistics workers run with the phase-B policy, so they carry the same measurement as
    the trainer (the stats engine is part of the measured code), on the backend the configuration
    gives statistics (sandbox/backends.py: "auto" is bubblewrap; a backend that cannot host
    sessions passes them to "auto")."""
    host = StatisticsHost(config.sandbox, placement)

    def count(outcome: str) -> None:
        counter = metrics.sandbox_starts if outcome == "started" else metrics.sandbox_failures
        counter.labels(host.name, Workload.STATISTICS.value).inc()

    return StatsWorkerPool(enclave=enclave, unwrap_key=keys.unwrap_dataset_key, host=host, policy=policy,
                           work_dir=config.work_dir, idle_seconds=config.stats_idle, on_start=count)


def model_intake(config: ServerConfig, placement: Placement) -> ModelIntake:
    """Phase A runs where the configuration says ("auto": gVisor, else bubblewrap)."""
    launcher, reason = backends.launcher_for(config.sandbox, Workload.INTAKE, placement)
    return ModelIntake(launcher=launcher, launcher_reason=reason)


def recover(app: App) -> None:
    """Start-up: takes this server's lease, recovers what servers whose lease has expired left in
    flight (never a live peer's work), and starts the heartbeat with the periodic sweeper."""
    assert app.lease is not None
    app.lease.acquire()
    recover_expired(app)
    app.lease.start(sweep=lambda: recover_expired(app))


def recover_expired(app: App) -> None:
    """Clean-up after servers that died: their running jobs (failed SERVER_RESTARTED, charged by the
    ledger rules, scratch removed), open reservations, half-written uploads and request claims. Only
    the work of owners holding no live lease is touched; every step is a conditional update, so two
    servers recovering the same dead peer at once settle each thing once."""
    if app.lease is not None:
        app.lease.expire_gone_neighbours()
    at = utcnow()
    app.ledger.recover(keep=app.runner.recover(orphaned_at=at), orphaned_at=at)

    def live() -> set[str]:
        with app.db.read() as session:
            return lease_repo.live(session, at)

    # Unreferenced blobs stay: only `cleanroom admin gc --yes` removes them (storage/gc.py).
    removed = app.datasets.sweep_partial_uploads(live=live)
    with app.db.transaction() as session:
        released = request_repo.release_all_in_flight(session, orphaned_at=at)
        lease_repo.remove_expired(session, at)
    if removed or released:
        log.info("recovered after an unclean stop: %d partial uploads removed, %d request claims released", removed, released)
