"""DP jobs (training, evaluation): the lifecycle as an explicit state machine (pure).

    pending_approval -> queued -> running -> released
           |              |         |-----> failed
           |              |         '-----> cancelled
           |              |-> cancelled, failed
           '-> rejected, cancelled

Transitions are idempotent: asking for the state a job is already in changes nothing. What reaches
the manufacturer is the state and, on failure, a code from FailureCode — never a message from code
that ran with data, since even an error text is data-dependent.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, replace
from datetime import datetime

from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.job_params import JobParams, from_spec_json


class JobKind(enum.Enum):
    TRAINING = "training"
    EVALUATION = "evaluation"


class JobState(enum.Enum):
    PENDING_APPROVAL = "pending_approval"
    QUEUED = "queued"
    RUNNING = "running"
    RELEASED = "released"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.RELEASED, JobState.FAILED, JobState.CANCELLED, JobState.REJECTED})

ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING_APPROVAL: frozenset({JobState.QUEUED, JobState.REJECTED, JobState.CANCELLED}),
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.RELEASED, JobState.FAILED, JobState.CANCELLED}),
}


class FailureCode(enum.Enum):
    """The only failure detail a manufacturer sees. Small on purpose."""

    NONE = "none"
    BUDGET_EXHAUSTED = "budget_exhausted"      # no reservation could be made when the job started
    RESOURCE_LIMIT = "resource_limit"          # the worker hit a sandbox limit (time, memory, output)
    WORKER_FAILED = "worker_failed"            # the worker stopped without a result
    RELEASE_REFUSED = "release_refused"        # the release gate refused the result
    ATTESTATION_REFUSED = "attestation_refused"
    SERVER_RESTARTED = "server_restarted"      # the server stopped while the job ran
    INTERNAL = "internal"
    PRIVACY_AUDIT_FAILED = "privacy_audit_failed"  # the policy's one-run privacy audit found more leakage than claimed


@dataclass(frozen=True)
class Job:
    id: str
    kind: JobKind
    owner_id: str                 # the manufacturer
    model_id: str
    dataset_id: str
    spec_json: str                # the request's parameters as stored: job_params.to_spec_json (see `params`)
    state: JobState
    created_at: datetime
    failure: FailureCode = FailureCode.NONE
    privacy_request_id: str | None = None
    spend_id: str | None = None
    workload: str | None = None
    finished_at: datetime | None = None

    @property
    def resource_name(self) -> str:
        return f"jobs/{self.id}"

    @property
    def params(self) -> JobParams:
        """The request's parameters, read from their stored JSON (spec_json)."""
        return from_spec_json(self.spec_json)


@dataclass(frozen=True)
class Artifact:
    """A released file of a job, as its requester may download it."""

    name: str
    sha256: str
    size_bytes: int


def new_job_id() -> str:
    return "j" + secrets.token_hex(8)


def transition(job: Job, to: JobState, *, failure: FailureCode = FailureCode.NONE, at: datetime | None = None) -> Job:
    """The one way a job changes state. Same state: no change. Anything not allowed: refused."""
    if job.state is to:
        return job
    if to not in ALLOWED.get(job.state, frozenset()):
        raise CleanroomError(ErrorCode.FAILED_PRECONDITION, f"a {job.state.value} job cannot become {to.value}")
    return replace(job, state=to, failure=failure if to is JobState.FAILED else FailureCode.NONE,
                   finished_at=at if to.final else job.finished_at)
