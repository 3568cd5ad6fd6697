"""What a statistics query gives back: an estimate, an answer with its receipt, or the word that
officers must approve it first; and how a worker's error reaches the caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation
from cleanroom.domain.privacy import Privacy
from cleanroom.privacy.approvals import Estimate
from cleanroom.statistics.engine import Answer


@dataclass(frozen=True)
class QueryEstimate:
    cost: Privacy
    expected_error: dict[str, float]
    budget: Estimate                          # the dataset's (a cohort: its first site's)
    site_budgets: tuple[Estimate, ...] = ()   # a cohort: every site's, in site order
    linkage: str = ""                         # a cohort: who counts as one person across its sites


@dataclass(frozen=True)
class QueryResult:
    answer: Answer
    answer_json: bytes
    receipt: bytes
    spend_id: str


class ApprovalRequired(CleanroomError):
    """Above the dataset's auto-approve threshold: an officer decides, then the caller asks again."""

    def __init__(self, request_name: str) -> None:
        super().__init__(ErrorCode.FAILED_PRECONDITION,
                         f"this query needs a privacy officer's approval; once {request_name} is approved, "
                         "send the same query again naming it in privacy_request",
                         violations=[FieldViolation("privacy_request", request_name)])
        self.request_name = request_name


def error_code(error: BaseException) -> str:
    return error.code.value if isinstance(error, CleanroomError) else ErrorCode.INTERNAL.value


def worker_error(reply: dict[str, Any]) -> CleanroomError:
    """The worker's error, as service code worded it; anything else is an internal failure."""
    try:
        code = ErrorCode(reply.get("error"))
    except ValueError:
        return CleanroomError(ErrorCode.INTERNAL, "the statistics query failed inside the service")
    violations = [FieldViolation(str(f), str(d)) for f, d in reply.get("violations", [])]
    return CleanroomError(code, str(reply.get("message", "the statistics query failed")), violations=violations)
