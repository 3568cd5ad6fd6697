"""Per-dataset approval policy and the privacy requests that jobs and queries submit (pure)."""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from cleanroom.domain.privacy import DELTA_SCALE, EPSILON_SCALE, Mechanism, Privacy

if TYPE_CHECKING:
    from cleanroom.domain.cost_reasons import CostReason

DEFAULT_MAX_EPSILON = 10 * EPSILON_SCALE
# The most rows one patient may contribute to a statistic under any policy: the statistics engine's
# bound (MAX_ROWS_PER_PATIENT in cleanroom/statistics/engine/query.py; tests/wire keeps them equal).
MAX_STATS_ROWS_PER_PATIENT = 10_000
# Two-officer approval ("four eyes"): a request above the auto-approve line needs this many
# approvals, each by a different officer governing the dataset.
MAX_APPROVALS_REQUIRED = 2
SECOND_OFFICER_NEEDED = "a second officer must approve: this officer has already approved this request"


@dataclass(frozen=True)
class ApprovalPolicy:
    """`max_delta=0` means the default: 1 / (10 x patients), so δ stays well below 1/patients."""

    max_epsilon: int = DEFAULT_MAX_EPSILON
    max_delta: int = 0
    auto_approve_epsilon: int = 0  # requests costing at most this ε skip the queue; 0: never
    stats_rows_per_patient: int = 1  # statistics: rows one patient contributes unless a query says
    # Jobs: weights are released only after the one-run privacy audit (trainer/audit.py) finds no
    # evidence that the trainer spent more than it claims.
    require_privacy_audit: bool = False
    approvals_required: int = 1  # 2: two different officers must approve what waits for an officer

    def delta_limit(self, patients: int) -> int:
        default = default_delta_limit(patients)
        return min(self.max_delta, default) if self.max_delta else default


def default_delta_limit(patients: int) -> int:
    """1 / (10 x patients): the largest δ any request may spend, whatever the policy says."""
    return DELTA_SCALE // (10 * max(patients, 1))


class Decision(enum.Enum):
    AUTO_APPROVE = "auto_approve"
    NEEDS_APPROVAL = "needs_approval"
    REFUSED = "refused"


@dataclass(frozen=True)
class PolicyCheck:
    decision: Decision
    details: tuple[CostReason, ...] = ()  # why it is refused or must wait, with the remedy

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(d.sentence for d in self.details)


def check_against_policy(policy: ApprovalPolicy, cost: Privacy, patients: int) -> PolicyCheck:
    from cleanroom.domain.cost_reasons import Outcome, policy_reasons  # the reasons module builds on this one

    details = tuple(policy_reasons(policy, cost, patients))
    if any(d.outcome is Outcome.REFUSED for d in details):
        return PolicyCheck(Decision.REFUSED, details)
    if details:
        return PolicyCheck(Decision.NEEDS_APPROVAL, details)
    return PolicyCheck(Decision.AUTO_APPROVE)


class RequestState(enum.Enum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Approval:
    """One officer's approval of a pending request."""

    officer_id: str
    at: datetime
    reason: str = ""


def needs_more_approvals(approvals: tuple[Approval, ...], required: int) -> bool:
    """Whether a request with these approvals (the newest included) still waits for another officer."""
    return len({a.officer_id for a in approvals}) < required


def already_approved(approvals: tuple[Approval, ...], officer_id: str) -> bool:
    return any(a.officer_id == officer_id for a in approvals)


@dataclass(frozen=True)
class WorkSummary:
    """What a request would run, in the words an officer decides on: the model or the statistic,
    and the columns it reads. Made by the submitting service from the request itself, never from
    the data."""

    description: str
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class PrivacyRequest:
    """A job's or query's ask to spend (ε, δ) on a dataset; approved requests hold a reservation."""

    id: str
    dataset_id: str
    manufacturer_id: str
    kind: str
    reference: str
    cost: Privacy
    state: RequestState
    created_at: datetime
    mechanism: Mechanism | None = None
    spend_id: str | None = None
    decided_by: str = ""
    reason: str = ""
    decided_at: datetime | None = None
    workload: str | None = None  # bound to the reservation an approval makes
    # A cohort request is one row per dataset, each decided by that dataset's own officers, joined
    # by a group id (the first row's id). It is approved once every row is, and rejected by any.
    group_id: str | None = None
    # How many different officers must approve (the dataset's policy at submission), and who has.
    approvals_required: int = 1
    approvals: tuple[Approval, ...] = ()
    work: WorkSummary | None = None

    @property
    def resource_name(self) -> str:
        return f"privacyRequests/{self.id}"


def new_request_id() -> str:
    return "r" + secrets.token_hex(8)


def new_spend_id() -> str:
    return "s" + secrets.token_hex(8)
