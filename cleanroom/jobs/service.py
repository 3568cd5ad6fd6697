"""Job use cases for manufacturers: submit, read, watch, cancel, download."""

from __future__ import annotations

import builtins
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy.orm import Session

import enclave_sim
from cleanroom import crypto
from cleanroom.domain import deid
from cleanroom.domain.approvals import PrivacyRequest, RequestState, WorkSummary, default_delta_limit
from cleanroom.domain.cohort import CohortSite, SiteRole, cohort_key, linkage_statement, make_site
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
from cleanroom.privacy.approvals import ApprovalService, GroupRequest
from cleanroom.privacy.ledger import Ledger, SpendRequest
from cleanroom.storage import audit_repo, clock, dataset_repo, job_repo, model_repo, privacy_repo
from cleanroom.storage.blobs import BlobStore
from cleanroom.storage.db import Database

log = logging.getLogger(__name__)

NOT_FOUND = "job not found"
WATCH_POLL_SECONDS = 0.25


def job_context(job_id: str) -> str:
    return f"job:{job_id}"


def _one_source(dataset_name: str, params: JobParams) -> None:
    """A request reads one dataset or a cohort of them: exactly one of the two fields."""
    if dataset_name and params.cohort:
        raise bad_request("name either one dataset or a cohort, not both; nothing was reserved",
                          FieldViolation("spec.cohort", "set together with spec.dataset"))
    if not dataset_name and not params.cohort:
        raise bad_request("name a dataset or a cohort of datasets; nothing was reserved",
                          FieldViolation("spec.dataset", "required (or spec.cohort)"))


def _withdraw(session: Session, job: Job) -> None:
    """A cancelled job's request leaves the queue; a cohort's at every site still waiting for its officer."""
    assert job.privacy_request_id is not None
    if job.params.cohort:  # serialised with the officers' decisions: the last approval cannot slip in between
        privacy_repo.lock_group(session, job.privacy_request_id)
    rows = privacy_repo.group_requests(session, job.privacy_request_id) if job.params.cohort else []
    for request_id in [r.id for r in rows if r.state is RequestState.PENDING] or [job.privacy_request_id]:
        privacy_repo.decide_request(session, request_id, RequestState.REJECTED, by="system",
                                    reason="withdrawn: the job was cancelled", spend_id=None)


def _mechanism(params: JobParams) -> Mechanism:
    training = isinstance(params, TrainingParams)
    return Mechanism("subsampled-gaussian" if training else "gaussian", "prv" if training else "zcdp-rdp")


def work_of(model: ModelVersion, params: JobParams) -> WorkSummary:
    """The job in an officer's words: which model, which columns in and out, how long it trains."""
    what = f"{params.kind} of {model.name} {model.version} ({model.resource_name}, {model.task})"
    reads = f"reads {len(params.feature_columns)} feature column(s) and the label {params.label_column}"
    epochs = f", {params.epochs} epoch(s)" if isinstance(params, TrainingParams) else ""
    return WorkSummary(f"{what}; {reads}{epochs}", (*params.feature_columns, params.label_column))


def _state_of(request: PrivacyRequest | GroupRequest) -> JobState:
    """Queued once the budget is held: a cohort's first site may auto-approve while another waits."""
    return JobState.QUEUED if request.state is RequestState.APPROVED and request.spend_id else JobState.PENDING_APPROVAL


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
        job's parameters (hence its workload, its echoed spec and its receipt) name the rule. A
        cohort request (params.cohort, no dataset name) goes to every site's approval at once."""
        _one_source(dataset_name, params)
        if params.cohort:
            return self._submit_cohort(maker, model_name, params)
        model, dataset = self._inputs(maker, model_name, dataset_name)
        params = self._with_recipe(params, model, dataset)
        self._validate(params, model, dataset)
        cost = Privacy.cost(params.target_epsilon, params.target_delta, field_prefix="spec.target_")
        job_id = new_job_id()
        workload = enclave_sim.workload_hash(model.package_sha256, params.to_json(), dataset.id)
        request = self._approvals.submit(maker, SpendRequest(dataset.id, maker.id, params.kind, f"jobs/{job_id}", cost, _mechanism(params), workload,
                                                             work=work_of(model, params)))
        return self._record(maker, Job(job_id, JobKind(params.kind), maker.id, model.id, dataset.id, to_spec_json(params),
                                       _state_of(request), clock.now(), privacy_request_id=request.id, spend_id=request.spend_id,
                                       workload=workload))

    def _submit_cohort(self, maker: Principal, model_name: str, params: JobParams) -> Job:
        """Several hospitals' datasets: all found and checked before any reservation, then one
        request per site (each hospital's policy), one spend over every site's budgets."""
        model = self._model(maker, model_name)
        sites = self._sites(maker, params.cohort)
        patients = validation.cohort_patients(params, sites)
        params = self._with_recipe_for(params, model, patients)
        violations = validation.cohort_violations(params, model, sites) + self._kind_violations(params, model, patients)
        if violations:
            raise bad_request("the job request is invalid; nothing was reserved", *violations)
        cost = Privacy.cost(params.target_epsilon, params.target_delta, field_prefix="spec.target_")
        if cost.delta > default_delta_limit(patients):
            raise bad_request("the job request is invalid; nothing was reserved", FieldViolation(
                "spec.target_delta", f"at most 1/(10 x {patients}), the cohort's public patient count"))
        job_id, ids = new_job_id(), [site.dataset_id for site in params.cohort]
        workload = enclave_sim.workload_hash(model.package_sha256, params.to_json(), cohort_key(ids))
        request = self._approvals.submit_cohort(maker, SpendRequest(ids[0], maker.id, params.kind, f"jobs/{job_id}", cost, _mechanism(params),
                                                                    workload, cohort=tuple(ids[1:]), work=work_of(model, params)))
        return self._record(maker, Job(job_id, JobKind(params.kind), maker.id, model.id, ids[0], to_spec_json(params),
                                       _state_of(request), clock.now(), privacy_request_id=request.id, spend_id=request.spend_id,
                                       workload=workload))

    def _record(self, maker: Principal, job: Job) -> Job:
        with self._db.transaction() as session:
            job_repo.add_job(session, job)
            datasets = [s.dataset_id for s in job.params.cohort] or [job.dataset_id]
            audit_repo.append(session, actor=maker.resource_name, action="job.submit", target=job.resource_name,
                              details={"kind": job.kind.value, "dataset": job.dataset_id, "model": job.model_id, "state": job.state.value,
                                       **({"cohort": datasets} if job.params.cohort else {})})
        self._metrics.jobs_submitted.labels(job.kind.value).inc()
        # Links this call's request id to the job id, which the runner and the worker log under.
        log.info("job submitted", extra={"job": job.id, "kind": job.kind.value, "state": job.state.value})
        return job

    def _inputs(self, maker: Principal, model_name: str, dataset_name: str) -> tuple[ModelVersion, Dataset]:
        model = self._model(maker, model_name)
        return model, self._sites(maker, (make_site(dataset_name.removeprefix("datasets/")),))[0][1]

    def _model(self, maker: Principal, model_name: str) -> ModelVersion:
        model_id = parse_model_name(model_name)
        if model_id is None:
            raise bad_request("spec.model must look like models/{id}", FieldViolation("spec.model", "not a model name"))
        with self._db.read() as session:
            model = owned_or_not_found(model_repo.get_model(session, model_id), maker.id, "model not found")
        if model.state is not ModelState.ACCEPTED:
            raise CleanroomError(ErrorCode.FAILED_PRECONDITION, "this model version failed intake; see its intake report",
                                 violations=[FieldViolation("spec.model", "rejected at intake")])
        return model

    def _sites(self, maker: Principal, cohort: tuple[CohortSite, ...]) -> list[validation.Site]:
        """Each site's dataset, shared with the maker; any other answer is NOT_FOUND, the same for a
        dataset that does not exist and one not shared (which would tell that it exists)."""
        found = []
        with self._db.read() as session:
            for site in cohort:
                dataset = dataset_repo.get_dataset(session, site.dataset_id)
                if dataset is None or not privacy_repo.is_shared(session, site.dataset_id, maker.id):
                    raise CleanroomError(ErrorCode.NOT_FOUND, "dataset not found")
                found.append((site, dataset))
        return found

    @classmethod
    def _with_recipe(cls, params: JobParams, model: ModelVersion, dataset: Dataset) -> JobParams:
        return cls._with_recipe_for(params, model, dataset.patient_count)

    @staticmethod
    def _with_recipe_for(params: JobParams, model: ModelVersion, patients: int) -> JobParams:
        """Fills what a training request left out (0 or "") from public numbers only: the disclosed
        patient count (a cohort's TRAIN sites' sum), the request's ε and the model's trainable
        parameter count. Whole held-out sites replace the random validation fraction."""
        if not isinstance(params, TrainingParams):
            return params
        holds_out = any(site.role is SiteRole.VALIDATE for site in params.cohort)
        asked = dataclasses.replace(params, validation_fraction=0.0) if holds_out else params
        filled = defaults_for(asked, patients=patients, model_parameters=trainable_parameter_count(model))
        return dataclasses.replace(params, **filled) if filled else params

    @classmethod
    def _validate(cls, params: JobParams, model: ModelVersion, dataset: Dataset) -> None:
        violations = validation.column_violations(params, model, dataset) + cls._kind_violations(params, model, dataset.patient_count)
        if violations:
            raise bad_request("the job request is invalid; nothing was reserved", *violations)

    @staticmethod
    def _kind_violations(params: JobParams, model: ModelVersion, patients: int) -> list[FieldViolation]:
        if isinstance(params, TrainingParams):
            violations = validation.training_violations(params, patients)
        else:
            violations = validation.evaluation_violations(params, model)
        return violations + validation.report_violations(params, model)

    def request_outcome(self, job: Job) -> tuple[RequestState, str | None]:
        """Where a pending job's privacy request stands: a cohort's is its group's (approved with the
        spend once every site approved and the spend is reserved, rejected once any site rejected)."""
        if not job.privacy_request_id:
            return RequestState.PENDING, None
        try:
            return self._approvals.group_outcome(job.privacy_request_id)
        except CleanroomError:  # the request is gone: nothing to promote
            return RequestState.PENDING, None

    def linkage(self, job: Job) -> str:
        """A cohort job's statement of who counts as one person across its sites ("" for one dataset)."""
        if not job.params.cohort:
            return ""
        with self._db.read() as session:
            datasets = [dataset_repo.get_dataset(session, site.dataset_id) for site in job.params.cohort]
        known = [d for d in datasets if d is not None]
        return linkage_statement([d.display_name for d in known], [deid.linkage_column(d.columns) is not None for d in known])

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
            if job.state is JobState.PENDING_APPROVAL and job.privacy_request_id:  # withdraw it from the officers' queues
                _withdraw(session, job)
            audit_repo.append(session, actor=maker.resource_name, action="job.cancel", target=job.resource_name, details={})
        spend_id = job.spend_id or self._approved_meanwhile(job)
        if spend_id:
            self._ledger.fail(spend_id, reason="cancelled before it ran")
        self._metrics.jobs_finished.labels(job.kind.value, "cancelled").inc()
        return cancelled

    def _approved_meanwhile(self, job: Job) -> str | None:
        """The reservation an officer's approval made after this job was read as pending (the
        withdrawal found nothing left to withdraw): the cancelled job will never run, so it goes back."""
        return self.request_outcome(job)[1] if job.state is JobState.PENDING_APPROVAL else None

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
