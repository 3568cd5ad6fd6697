"""The one error root of the service.

Every failure a caller may see is a CleanroomError with a code from ErrorCode. The API layer maps
the code to a gRPC status and a public message (cleanroom/api/errors.py); `violations` become
google.rpc BadRequest field violations. Neither the message nor a violation may ever contain a
data value: name the column, the row number or the rule, never the content.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorCode(enum.Enum):
    BAD_REQUEST = "BAD_REQUEST"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    AUTH_RATE_LIMITED = "AUTH_RATE_LIMITED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ALREADY_DECIDED = "ALREADY_DECIDED"
    PRIVACY_BUDGET_EXHAUSTED = "PRIVACY_BUDGET_EXHAUSTED"
    POLICY_REFUSED = "POLICY_REFUSED"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
    REQUEST_IN_PROGRESS = "REQUEST_IN_PROGRESS"
    UPLOAD_TOO_LARGE = "UPLOAD_TOO_LARGE"
    UPLOAD_INCOMPLETE = "UPLOAD_INCOMPLETE"
    SENSITIVE_DATA_FOUND = "SENSITIVE_DATA_FOUND"
    INTEGRITY_ERROR = "INTEGRITY_ERROR"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: `field` is a path such as "columns[age]"; `description` names the rule."""

    field: str
    description: str


class CleanroomError(Exception):
    """Base of every error the service reports. `message` is shown to the caller as is."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        violations: tuple[FieldViolation, ...] | list[FieldViolation] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.violations = tuple(violations)
        self.retry_after = retry_after  # seconds; sent as google.rpc.RetryInfo


def bad_request(message: str, *violations: FieldViolation) -> CleanroomError:
    return CleanroomError(ErrorCode.BAD_REQUEST, message, violations=violations)


class IntegrityError(CleanroomError):
    """Ciphertext failed authentication: tampered, truncated, reordered or under the wrong key."""

    def __init__(self, message: str = "stored data failed its integrity check") -> None:
        super().__init__(ErrorCode.INTEGRITY_ERROR, message)
