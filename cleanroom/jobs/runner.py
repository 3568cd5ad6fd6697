"""The job runner: promotes approved requests, claims queued jobs, and drives phase B for each.

For one job, outside the sandbox: attest (a quote for the job's workload under the trainer's
measurement), record that data is about to be decrypted (from here on the budget is spent whatever
happens), have the key broker wrap the dataset key to the quote's ephemeral key, and run the worker
in a bubblewrap sandbox with the sealed dataset, the validated program and the secrets on stdin.
Then the release gate, the signed receipt (verified before release), the ledger commit, and the
artefacts sealed for the requester. A training job on a dataset whose policy requires the one-run
privacy audit carries canaries in the released run (job.json "privacy_audit"); a run whose audit
shows more leakage than the ε it spent fails PRIVACY_AUDIT_FAILED, nothing released, its budget
spent. Workers are separate processes started by exec, never a fork of this gRPC process.

Cancellation of a running job: a watch thread polls the job's cancel flag (any server sharing the
database may have set it) and sets the sandbox request's cancel event; the launcher then kills the
whole sandbox (cgroup and process group) and the job ends CANCELLED with nothing released, its
reservation settled by the ledger rules (spent once the key has left the broker). If the server
itself dies, bubblewrap's --die-with-parent takes the sandbox down with it and the next start
fails the job with SERVER_RESTARTED.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

import enclave_sim
from cleanroom import crypto
from cleanroom.attestation.enclave import Enclave
from cleanroom.domain import deid
from cleanroom.domain.approvals import RequestState
from cleanroom.domain.cohort import CohortSite
from cleanroom.domain.datasets import Dataset
from cleanroom.domain.job_params import JobParams
from cleanroom.domain.jobs import FailureCode, Job, JobKind, JobState, transition
from cleanroom.domain.model_versions import ModelVersion
from cleanroom.domain.privacy import Spend
from cleanroom.domain.privacy_audit import canary_count
from cleanroom.identity.keyring import KeyService
from cleanroom.jobs import release, validation
from cleanroom.jobs.service import JobService, job_context
from cleanroom.models.versions import ModelVersionService
from cleanroom.observability import logs
from cleanroom.observability.metrics import Metrics
from cleanroom.privacy.ledger import Ledger
from cleanroom.sandbox import cgroups
from cleanroom.sandbox.base import Outcome, SandboxLauncher, SandboxPolicy, SandboxRequest, error_type
from cleanroom.storage import dataset_repo, job_repo, model_repo, privacy_repo
from cleanroom.storage.blobs import BlobStore
from cleanroom.storage.db import Database

log = logging.getLogger(__name__)

WORKER_ARGV = ("python3", "-m", "cleanroom.worker")
POLL_SECONDS = 0.2
CANCEL_POLL_SECONDS = 0.2


class JobFailed(Exception):
    def __init__(self, code: FailureCode) -> None:
        super().__init__(code.value)
        self.code = code


def _workload(job: Job) -> str:
    """The workload hash every submitted job carries (a job without one cannot run)."""
    if job.workload is None:
        raise JobFailed(FailureCode.INTERNAL)
    return job.workload


@dataclass(frozen=True)
class _Site:
    """One dataset a job reads: its place in the request, the stored dataset, its wrapped key."""

    site: CohortSite
    dataset: Dataset
    wrapped_key: bytes


def _load_sites(session: Session, job: Job) -> list[_Site]:
    """The job's sites in request order (a single-dataset job: its dataset as one TRAIN site)."""
    sites = []
    for site in job.params.cohort or (CohortSite(job.dataset_id),):
        dataset = dataset_repo.get_dataset(session, site.dataset_id)
        wrapped = dataset_repo.wrapped_dataset_key(session, site.dataset_id)
        if dataset is None or wrapped is None:  # deleted since the request was checked
            raise JobFailed(FailureCode.INTERNAL)
        sites.append(_Site(site, dataset, wrapped))
    return sites


def _site_input(index: int, site: _Site, study: tuple[str, ...]) -> dict[str, object]:
    """One site of job.json: every study name mapped onto this dataset's column, its patient key
    and its linkage column (None: its patients link to no other site's). A stream site's blob is a
    sealed stream table (crypto/sealed_table.py), described by "stream"."""
    out: dict[str, object] = {
        "dataset_id": site.dataset.id, "name": site.dataset.display_name, "blob": f"site{index}.blob",
        "columns": {name: site.site.column_for(name) for name in study},
        "patient_column": next(c.name for c in site.dataset.columns if c.role.name == "PATIENT_KEY"),
        "linkage_column": deid.linkage_column(site.dataset.columns), "role": site.site.role.value}
    if site.dataset.stream is not None:
        out["stream"] = site.dataset.stream.to_json()
    return out


def _study(params: JobParams) -> tuple[str, ...]:
    """The study's column names: the features and the label column; a window labelled by a
    threshold rule has no label column, so only the features (the channels)."""
    if params.windows is not None and params.windows.label_rule is not None:
        return params.feature_columns
    return (*params.feature_columns, params.label_column)


class JobCancelled(Exception):
    """The requester cancelled the job while it ran: its sandbox was killed, nothing is released."""


class _CancelWatch(threading.Thread):
    """Polls the job's cancel flag (set by any server sharing the database) and sets `event`."""

    def __init__(self, db: Database, job_id: str, event: threading.Event) -> None:
        super().__init__(name=f"cancel-watch-{job_id}", daemon=True)
        self._db, self._job_id, self.event, self.done = db, job_id, event, threading.Event()

    def run(self) -> None:
        while not self.done.wait(CANCEL_POLL_SECONDS):
            try:
                with self._db.read() as session:
                    if job_repo.cancel_requested(session, self._job_id):
                        self.event.set()
                        return
            except Exception:  # noqa: BLE001 - a database hiccup must not end the watch
                log.warning("cancel watch could not read the job", exc_info=True)


class JobRunner:
    def __init__(self, *, db: Database, jobs: JobService, ledger: Ledger, enclave: Enclave, models: ModelVersionService,
                 blobs: BlobStore, keys: KeyService, launcher: SandboxLauncher, policy: SandboxPolicy,
                 metrics: Metrics, work_dir: Path, concurrency: int = 1, owner: str | None = None) -> None:
        self._db, self._jobs, self._ledger, self._enclave = db, jobs, ledger, enclave
        self._owner = owner  # this server's instance id: a job it claims is its own until it ends
        self._models, self._blobs, self._keys, self._launcher = models, blobs, keys, launcher
        self._policy, self._metrics, self._work_dir = policy, metrics, work_dir
        self._stop = threading.Event()
        self._concurrency = concurrency
        self._threads: list[threading.Thread] = []
        self._claim_lock = threading.Lock()

    def start(self) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._loop, name=f"job-runner-{i}", daemon=True) for i in range(self._concurrency)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.promote_decided()
                job = self.claim_next()
                if job is None:
                    self._stop.wait(POLL_SECONDS)
                    continue
                self.run(job)
            except Exception:  # noqa: BLE001 - a runner thread must survive anything one job does
                log.exception("job runner loop error")
                self._stop.wait(1.0)

    # --- queue -------------------------------------------------------------------------------------

    def promote_decided(self) -> None:
        """Pending jobs whose privacy request was decided become queued or rejected (a cohort's once
        every site's officers approved and its spend is reserved, or once any site rejected)."""
        with self._db.read() as session:
            pending = job_repo.jobs_in(session, JobState.PENDING_APPROVAL)
        for job in pending:
            state, spend_id = self._jobs.request_outcome(job)
            if state is RequestState.APPROVED and spend_id:
                self._move(job, transition(job, JobState.QUEUED), spend_id=spend_id)
            elif state is RequestState.REJECTED:
                self._jobs.finish(job, JobState.REJECTED)

    def _move(self, job: Job, moved: Job, **values: Any) -> bool:
        with self._db.transaction() as session:
            return job_repo.move(session, moved, job.state, **values)

    def claim_next(self) -> Job | None:
        with self._claim_lock, self._db.read() as session:
            queued = job_repo.jobs_in(session, JobState.QUEUED, limit=1)
        for job in queued:
            with self._db.transaction() as session:
                claimed = job_repo.claim(session, transition(job, JobState.RUNNING), job.state, self._owner)
            if claimed:
                return transition(job, JobState.RUNNING)
        return None

    # --- one job -----------------------------------------------------------------------------------

    def run(self, job: Job) -> None:
        logs.request_id.set(job.id)
        started = time.monotonic()
        self._metrics.jobs_running.labels(job.kind.value).inc()
        watch = _CancelWatch(self._db, job.id, threading.Event())
        watch.start()
        try:
            listing, wrapped = self._execute(job, watch.event)
        except JobCancelled:
            self._cancelled(job)
        except JobFailed as failure:
            self._fail(job, failure.code)
        except Exception:  # noqa: BLE001 - any other error fails the job closed
            log.exception("job failed inside the service")
            self._fail(job, FailureCode.INTERNAL)
        else:
            self._release(job, listing, wrapped)
        finally:
            watch.done.set()
            self._metrics.jobs_running.labels(job.kind.value).dec()
            self._metrics.job_duration.labels(job.kind.value).observe(time.monotonic() - started)

    def _execute(self, job: Job, cancel: threading.Event) -> tuple[list[dict[str, Any]], bytes]:
        with self._db.read() as session:
            spend = privacy_repo.get_spend(session, job.spend_id) if job.spend_id else None
            model = model_repo.get_model(session, job.model_id)
            sites = _load_sites(session, job)
            audited = job.kind is JobKind.TRAINING and any(privacy_repo.get_policy(session, s.dataset.id).require_privacy_audit
                                                           for s in sites)
        if spend is None or model is None:
            raise JobFailed(FailureCode.INTERNAL)
        canaries = canary_count(sum(math.prod(s) for s in self._trainable_shapes(model).values())) if audited else 0
        work = Path(tempfile.mkdtemp(prefix=f"{job.id}-", dir=self._ensure_work_dir()))
        try:
            if cancel.is_set():
                raise JobCancelled
            secrets = self._attest_and_release_keys(job, spend.id, sites)
            outputs = self._run_worker(job, model, sites, work, secrets, cancel, canaries)
            if cancel.is_set():  # cancelled as the worker finished: its outputs are discarded unread
                raise JobCancelled
            return self._gate_and_store(job, model, sites, spend, outputs, secrets[0]["nonce"], canaries)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _ensure_work_dir(self) -> Path:
        self._work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self._work_dir

    def _attest_and_release_keys(self, job: Job, spend_id: str, sites: list[_Site]) -> list[dict[str, str]]:
        """One key-broker release per dataset, each under its own quote of the job's workload."""
        self._ledger.mark_decrypted(spend_id)  # before any key leaves the broker: from now on it is spent
        released = []
        for site in sites:
            dataset_key = self._keys.unwrap_dataset_key(site.dataset.id, site.wrapped_key)
            try:
                released.append(self._enclave.release_to_sandbox(_workload(job), site.dataset.id, dataset_key))
            except enclave_sim.AttestationError:
                raise JobFailed(FailureCode.ATTESTATION_REFUSED) from None
        return released

    def _run_worker(self, job: Job, model: ModelVersion, sites: list[_Site], work: Path, secrets: list[dict[str, str]],
                    cancel: threading.Event | None = None, canaries: int = 0) -> dict[str, bytes]:
        inputs, out = work / "in", work / "out"
        inputs.mkdir()
        out.mkdir()
        for index, site in enumerate(sites):
            shutil.copyfile(self._blobs.path_of(site.dataset.id), inputs / f"site{index}.blob")  # ciphertext only
        (inputs / "model.safetensors").write_bytes(self._models.artifact_bytes(model.id))
        audit = {"privacy_audit": {"canaries": canaries}} if canaries else {}
        (inputs / "job.json").write_text(json.dumps({**self._job_input(job, model, sites), **audit}))
        stdin = json.dumps({"sites": [{k: v for k, v in one.items() if k != "nonce"} for one in secrets]}).encode()
        result = self._launcher.run(SandboxRequest(argv=WORKER_ARGV, inputs={"job": inputs}, output_dir=out, stdin=stdin,
                                                   env={"CLEANROOM_REQUEST_ID": job.id}, cancel=cancel), self._policy)
        if result.outcome is Outcome.CANCELLED:
            raise JobCancelled
        if result.outcome in (Outcome.WALL_TIME, Outcome.MEMORY, Outcome.OUTPUT_TOO_LARGE):
            raise JobFailed(FailureCode.RESOURCE_LIMIT)
        if not result.ok:
            log.warning("worker ended without a result", extra={
                "outcome": result.outcome.value, "exit_code": result.exit_code, "error_type": error_type(result.stderr)})
            raise JobFailed(FailureCode.WORKER_FAILED)
        return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    @staticmethod
    def _job_input(job: Job, model: ModelVersion, sites: list[_Site]) -> dict[str, object]:
        """job.json, what the worker reads: the parameters' JSON form, what it needs of the model, and
        each site (a single-dataset job is one TRAIN site whose study names are its own columns)."""
        params = job.params
        study = _study(params)
        return {"params": params.to_json(), "dataset_id": sites[0].dataset.id, "task": model.task,
                "num_classes": model.num_classes, "input_shape": list(model.input_shape), "trainable": list(model.trainable),
                "metrics": validation.metrics_for(model, params),
                "sites": [_site_input(index, site, study) for index, site in enumerate(sites)]}

    def _gate_and_store(self, job: Job, model: ModelVersion, sites: list[_Site], spend: Spend, outputs: dict[str, bytes],
                        nonce: str, canaries: int = 0) -> tuple[list[dict[str, Any]], bytes]:
        try:
            checked = release.check_outputs(job.kind.value, outputs, trainable_shapes=self._trainable_shapes(model), reserved=spend.reserved)
            checked = release.check_audit(checked, canaries=canaries)
        except release.ReleaseRefused:
            raise JobFailed(FailureCode.RELEASE_REFUSED) from None
        except release.AuditFailed as failed:
            log.warning("privacy audit failed; nothing released", extra={"audit": failed.audit.to_json()})
            raise JobFailed(FailureCode.PRIVACY_AUDIT_FAILED) from None
        receipt = self._sign(job, release.dataset_commitment([(s.dataset.id, s.dataset.ciphertext_sha256) for s in sites],
                                                             cohort=bool(job.params.cohort)), checked, nonce)
        self._ledger.release(spend.id, checked.spent)
        files = {**checked.released, "receipt.json": receipt}
        return self._seal_artifacts(job, files)

    def _trainable_shapes(self, model: ModelVersion) -> dict[str, tuple[int, ...]]:
        from safetensors import safe_open

        with tempfile.NamedTemporaryFile(dir=self._ensure_work_dir()) as handle:
            handle.write(self._models.artifact_bytes(model.id))
            handle.flush()
            with safe_open(handle.name, framework="pt") as stored:
                shapes = {k.removeprefix("state/"): tuple(stored.get_slice(k).get_shape()) for k in stored.keys() if k.startswith("state/")}
        return {name: shapes[name] for name in model.trainable}

    def _sign(self, job: Job, dataset_commitment: str, checked: release.Checked, nonce: str) -> bytes:
        enclave, workload = self._enclave, _workload(job)
        report = enclave_sim.sign_report(
            enclave.attestation_key, measurement=enclave.measurement, workload=workload,
            dp_parameters=release.canonical_parameters(checked.dp_parameters), epsilon_spent=checked.spent.epsilon_value,
            accountant=checked.accountant, dataset_commitment=dataset_commitment, released_files=checked.released, nonce=nonce,
        )
        try:  # fail closed: the receipt must pass the checks a client will run
            bundle = enclave.trust_bundle()
            enclave_sim.verify_report(report, pinned_root_public_key_pem=bundle.root_public_key_pem.encode(),
                                      allowed_measurements=bundle.allowed_measurements, expected_workload=workload,
                                      released_files=checked.released, expected_nonce=nonce)
        except enclave_sim.VerificationError:
            raise JobFailed(FailureCode.RELEASE_REFUSED) from None
        return report

    def _seal_artifacts(self, job: Job, files: dict[str, bytes]) -> tuple[list[dict[str, Any]], bytes]:
        key, listing = crypto.new_data_key(), []
        for index, name in enumerate(sorted(files)):
            blob_id = f"{job.id}-a{index}"
            with self._blobs.create(blob_id) as pending:
                writer = crypto.SealedWriter(pending.file, key, blob_id)
                writer.write(files[name])
                writer.close()
                pending.commit()
            listing.append({"name": name, "blob": blob_id, "size": len(files[name]), "sha256": enclave_sim.sha256_hex(files[name])})
        return listing, self._keys.wrap_key(job_context(job.id), key)

    def _release(self, job: Job, listing: list[dict[str, Any]], wrapped: bytes) -> None:
        with self._db.read() as session:
            cancelled = job_repo.cancel_requested(session, job.id)
        if cancelled or not self._jobs.finish(job, JobState.RELEASED, **job_repo.artifact_values(listing, wrapped)):
            # The requester withdrew (or the job moved meanwhile): nothing is released, the sealed
            # artefacts go, and the decrypted data made the budget spent (the gate committed it).
            for entry in listing:
                self._blobs.delete(entry["blob"])
            self._jobs.finish(job, JobState.CANCELLED)

    def _cancelled(self, job: Job) -> None:
        """Cancelled while running: the sandbox is dead; per the ledger rules a reservation whose data
        was decrypted is spent, one that never reached the key broker is refunded."""
        if job.spend_id:
            self._ledger.fail(job.spend_id, reason="cancelled while running")
        self._jobs.finish(job, JobState.CANCELLED)
        log.info("job cancelled while running; its sandbox was killed")

    def _fail(self, job: Job, code: FailureCode) -> None:
        if job.spend_id:
            self._ledger.fail(job.spend_id, reason=f"job failed: {code.value}")
        with self._db.read() as session:
            cancelled = job_repo.cancel_requested(session, job.id)
        self._jobs.finish(job, JobState.CANCELLED if cancelled else JobState.FAILED, failure=code)

    def recover(self, orphaned_at: datetime | None = None) -> set[str]:
        """Start-up and sweeper: a job whose server died while running it (no live lease at
        `orphaned_at`) has failed (its spend follows the ledger rules) and its scratch folder goes;
        a live server's job goes on. Queued jobs keep their reservation and run again. Returns the
        spends still wanted (queued, pending-approved and running jobs')."""
        with self._db.read() as session:
            running = job_repo.orphaned_running(session, orphaned_at or datetime.now(UTC))
        for job in running:
            self._fail(job, FailureCode.SERVER_RESTARTED)
            self._remove_scratch(job.id)
        try:  # their sandboxes died with the old server; the empty cgroups they ran in remain
            cgroups.sweep_stale()
        except (OSError, ValueError):
            log.warning("could not sweep stale sandbox cgroups", exc_info=True)
        with self._db.read() as session:
            return job_repo.spends_still_wanted(session)

    def _remove_scratch(self, job_id: str) -> None:
        """A dead server's scratch for this job (encrypted dataset copy, job.json, model, outputs)."""
        if not self._work_dir.is_dir():
            return
        for folder in self._work_dir.glob(f"{job_id}-*"):
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
