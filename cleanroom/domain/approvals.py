"""Per-dataset approval policy and the privacy requests that jobs and queries submit (pure)."""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from datetime import datetime

from cleanroom.domain.privacy import DELTA_SCALE, EPSILON_SCALE, Mechanism, Privacy

DEFAULT_MAX_EPSILON = 10 * EPSILON_SCALE


@dataclass(frozen=True)
class ApprovalPolicy:
    """`max_delta=0` means the default: 1 / (10 x patients), so δ stays well below 1/patients."""

    max_epsilon: int = DEFAULT_MAX_EPSILON
    max_delta: int = 0
    auto_approve_epsilon: int = 0  # requests costing at most this ε skip the queue; 0: never
    stats_rows_per_patient: int = 1  # statistics: rows one patient contributes unless a query says

    def delta_limit(self, patients: int) -> int:
        default = DELTA_SCALE // (10 * max(patients, 1))
        return min(self.max_delta, default) if self.max_delta else default


class Decision(enum.Enum):
    AUTO_APPROVE = "auto_approve"
    NEEDS_APPROVAL = "needs_approval"
    REFUSED = "refused"


@dataclass(frozen=True)
class PolicyCheck:
    decision: Decision
    reasons: tuple[str, ...] = ()


def check_against_policy(policy: ApprovalPolicy, cost: Privacy, patients: int) -> PolicyCheck:
    reasons = []
    if cost.epsilon > policy.max_epsilon:
        reasons.append(f"ε {cost.epsilon_value:g} is above this dataset's per-job limit {policy.max_epsilon / EPSILON_SCALE:g}")
    delta_limit = policy.delta_limit(patients)
    if cost.delta > delta_limit:
        reasons.append(f"δ {cost.delta_value:.3g} is above this dataset's per-job limit {delta_limit / DELTA_SCALE:.3g}")
    if reasons:
        return PolicyCheck(Decision.REFUSED, tuple(reasons))
    if cost.epsilon <= policy.auto_approve_epsilon:
        return PolicyCheck(Decision.AUTO_APPROVE)
    return PolicyCheck(Decision.NEEDS_APPROVAL)


class RequestState(enum.Enum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


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

    @property
    def resource_name(self) -> str:
        return f"privacyRequests/{self.id}"


def new_request_id() -> str:
    return "r" + secrets.token_hex(8)


def new_spend_id() -> str:
    return "s" + secrets.token_hex(8)
