"""Job use cases for manufacturers: submit, read, watch, cancel, download."""

from __future__ import annotations

import builtins
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import enclave_sim
from cleanroom import crypto
from cleanroom.domain.approvals import RequestState
from cleanroom.domain.datasets import Dataset
from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request
from cleanroom.domain.identity import Principal
from cleanroom.domain.job_params import JobParams, TrainingParams, to_spec_json
from cleanroom.domain.jobs import Artifact, FailureCode, Job, JobKind, JobState, new_job_id, transition
from cleanroom.domain.model_versions import ModelState, ModelVersion, parse_model_name
from cleanroom.domain.ownership import owned_or_not_found
from cleanroom.domain.pagination import PageRequest
from cleanroom.domain.privacy import Mechanism, Privacy
from cleanroom.domain.recipe import defaults_for
from cleanroom.identity.keyring import KeyService
from cleanroom.jobs import validation
from cleanroom.observability.metrics import Metrics
from cleanroom.privacy.approvals import ApprovalService
from cleanroom.privacy.ledger import Ledger, SpendRequest
from cleanroom.storage import audit_repo, clock, dataset_repo, job_repo, model_repo, privacy_repo
from cleanroom.storage.blobs import BlobStore
from cleanroom.storage.db import Database

log = logging.getLogger(__name__)

NOT_FOUND = "job not found"
WATCH_POLL_SECONDS = 0.25


def job_context(job_id: str) -> str:
    return f"job:{job_id}"


def trainable_parameter_count(model: ModelVersion) -> int:
    """From the intake report: the trainable count (versions accepted before it was recorded give
    their whole parameter count, all of it trainable for a manifest of ["*"])."""
    report = model.report
    count = report.get("trainable_parameter_count") or report.get("parameter_count") or 0
    return int(count)


class JobService:
    def __init__(self, db: Database, approvals: ApprovalService, ledger: Ledger, blobs: BlobStore, keys: KeyService, metrics: Metrics) -> None:
        self._db = db
        self._approvals = approvals
        self._ledger = ledger
        self._blobs = blobs
        self._keys = keys
        self._metrics = metrics

    # --- submission ------------------------------------------------------------------------------

    def submit(self, maker: Principal, model_name: str, dataset_name: str, params: JobParams) -> Job:
        """Checks everything first; only then asks for budget (auto-approved or queued for an officer).
        A training request that leaves recipe fields out gets them from the budget-aware recipe; the
        job's parameters (hence its workload, its echoed spec and its receipt) name the rule."""
        kind = JobKind(params.kind)
        model, dataset = self._inputs(maker, model_name, dataset_name)
        params = self._with_recipe(params, model, dataset)
        self._validate(params, model, dataset)
        cost = Privacy.cost(params.target_epsilon, params.target_delta, field_prefix="spec.target_")
        job_id = new_job_id()
        workload = enclave_sim.workload_hash(model.package_sha256, params.to_json(), dataset.id)
        mechanism = Mechanism("subsampled-gaussian" if kind is JobKind.TRAINING else "gaussian", "prv" if kind is JobKind.TRAINING else "zcdp-rdp")
        request = self._approvals.submit(maker, SpendRequest(dataset.id, maker.id, kind.value, f"jobs/{job_id}", cost, mechanism, workload))
        state = JobState.QUEUED if request.state is RequestState.APPROVED else JobState.PENDING_APPROVAL
        job = Job(job_id, kind, maker.id, model.id, dataset.id, to_spec_json(params), state, clock.now(),
                  privacy_request_id=request.id, spend_id=request.spend_id, workload=workload)
        with self._db.transaction() as session:
            job_repo.add_job(session, job)
            audit_repo.append(session, actor=maker.resource_name, action="job.submit", target=job.resource_name,
                              details={"kind": kind.value, "dataset": dataset.id, "model": model.id, "state": state.value})
        self._metrics.jobs_submitted.labels(kind.value).inc()
        # Links this call's request id to the job id, which the runner and the worker log under.
        log.info("job submitted", extra={"job": job.id, "kind": kind.value, "state": state.value})
        return job

    def _inputs(self, maker: Principal, model_name: str, dataset_name: str) -> tuple[ModelVersion, Dataset]:
        model_id, dataset_id = parse_model_name(model_name), dataset_name.removeprefix("datasets/")
        if model_id is None:
            raise bad_request("spec.model must look like models/{id}", FieldViolation("spec.model", "not a model name"))
        with self._db.read() as session:
            model = model_repo.get_model(session, model_id)
            dataset = dataset_repo.get_dataset(session, dataset_id)
            shared = privacy_repo.is_shared(session, dataset_id, maker.id)
        model = owned_or_not_found(model, maker.id, "model not found")
        if model.state is not ModelState.ACCEPTED:
            raise CleanroomError(ErrorCode.FAILED_PRECONDITION, "this model version failed intake; see its intake report",
                                 violations=[FieldViolation("spec.model", "rejected at intake")])
        if dataset is None or not shared:
            raise CleanroomError(ErrorCode.NOT_FOUND, "dataset not found")
        return model, dataset

    @staticmethod
    def _with_recipe(params: JobParams, model: ModelVersion, dataset: Dataset) -> JobParams:
        """Fills what a training request left out (0 or "") from public numbers only: the dataset's
        disclosed patient count, the request's ε and the model's trainable parameter count."""
        if not isinstance(params, TrainingParams):
            return params
        filled = defaults_for(params, patients=dataset.patient_count, model_parameters=trainable_parameter_count(model))
        return dataclasses.replace(params, **filled) if filled else params

    @staticmethod
    def _validate(params: JobParams, model: ModelVersion, dataset: Dataset) -> None:
        violations = validation.column_violations(params, model, dataset)
        if isinstance(params, TrainingParams):
            violations += validation.training_violations(params, dataset.patient_count)
        else:
            violations += validation.evaluation_violations(params, model)
        violations += validation.report_violations(params, model)
        if violations:
            raise bad_request("the job request is invalid; nothing was reserved", *violations)

    # --- reading ---------------------------------------------------------------------------------

    def get(self, maker: Principal, name: str) -> Job:
        job_id = name.removeprefix("jobs/")
        with self._db.read() as session:
            job = job_repo.get_job(session, job_id)
        return owned_or_not_found(job, maker.id, NOT_FOUND)

    def list(self, maker: Principal, page: PageRequest) -> builtins.list[Job]:
        with self._db.read() as session:
            return job_repo.list_jobs(session, owner_id=maker.id, after_id=page.after_id, limit=page.size)

    def watch(self, maker: Principal, name: str, *, active: Callable[[], bool] = lambda: True) -> Iterator[Job]:
        """Yields the job at each state change until it is final: coarse states only."""
        last = None
        while active():
            job = self.get(maker, name)
            if job.state is not last:
                last = job.state
                yield job
            if job.state.final:
                return
            time.sleep(WATCH_POLL_SECONDS)

    def artifacts(self, job: Job) -> builtins.list[Artifact]:
        with self._db.read() as session:
            listing, _ = job_repo.artifacts(session, job.id)
        return [Artifact(name=a["name"], sha256=a["sha256"], size_bytes=a["size"]) for a in listing]

    def download(self, maker: Principal, name: str, artifact: str) -> Iterator[bytes]:
        job = self.get(maker, name)
        with self._db.read() as session:
            listing, wrapped = job_repo.artifacts(session, job.id)
        entry = next((a for a in listing if a["name"] == artifact), None)
        if job.state is not JobState.RELEASED or entry is None or wrapped is None:
            raise CleanroomError(ErrorCode.NOT_FOUND, "artifact not found")
        key = self._keys.unwrap_key(job_context(job.id), wrapped)
        with self._db.transaction() as session:
            audit_repo.append(session, actor=maker.resource_name, action="job.download", target=job.resource_name,
                              details={"artifact": artifact, "sha256": entry["sha256"]})
        with self._blobs.open(entry["blob"]) as sealed:
            reader = crypto.SealedReader(sealed, key, entry["blob"])
            while chunk := reader.read(1 << 20):
                yield chunk

    # --- cancellation ------------------------------------------------------------------------------

    def cancel(self, maker: Principal, name: str) -> Job:
        """Waiting jobs stop at once (nothing decrypted: refunded). A running job is flagged here; the
        runner sees the flag within a poll interval, kills its sandbox and ends it CANCELLED with
        nothing released; once its data has been decrypted its reservation is spent."""
        job = self.get(maker, name)
        if job.state.final:
            return job
        if job.state is JobState.RUNNING:
            with self._db.transaction() as session:
                job_repo.request_cancel(session, job.id)
                audit_repo.append(session, actor=maker.resource_name, action="job.cancel", target=job.resource_name,
                                  details={"while": "running"})
            return job
        cancelled = transition(job, JobState.CANCELLED, at=clock.now())
        with self._db.transaction() as session:
            if not job_repo.move(session, cancelled, job.state):
                return self.get(maker, name)  # it moved meanwhile; report what it is now
            if job.state is JobState.PENDING_APPROVAL and job.privacy_request_id:  # withdraw it from the officer's queue
                privacy_repo.decide_request(session, job.privacy_request_id, RequestState.REJECTED, by="system",
                                            reason="withdrawn: the job was cancelled", spend_id=None)
            audit_repo.append(session, actor=maker.resource_name, action="job.cancel", target=job.resource_name, details={})
        if job.spend_id:
            self._ledger.fail(job.spend_id, reason="cancelled before it ran")
        self._metrics.jobs_finished.labels(job.kind.value, "cancelled").inc()
        return cancelled

    def finish(self, job: Job, to: JobState, failure: FailureCode = FailureCode.NONE, **values: Any) -> bool:
        """Moves a job to a final state (used by the runner and at start-up)."""
        done = transition(job, to, failure=failure, at=clock.now())
        with self._db.transaction() as session:
            moved = job_repo.move(session, done, job.state, **values)
            if moved:
                audit_repo.append(session, actor="system", action=f"job.{to.value}", target=job.resource_name,
                                  details={"failure": failure.value})
        if moved:
            self._metrics.jobs_finished.labels(job.kind.value, to.value).inc()
        return moved
