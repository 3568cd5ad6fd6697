"""The error catalog: ErrorCode -> gRPC status, with google.rpc details.

Callers get the CleanroomError's message (written to be safe and readable), a BadRequest with its
field violations, and an ErrorInfo whose reason is the code, so clients can branch on it. Anything
that is not a CleanroomError becomes INTERNAL with a reference id; its details stay in the log.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation
from cleanroom.observability import logs

log = logging.getLogger(__name__)

DOMAIN = "cleanroom.v1"

CATALOG: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.SENSITIVE_DATA_FOUND: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.AUTH_RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.ALREADY_DECIDED: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.PRIVACY_BUDGET_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.POLICY_REFUSED: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.REQUEST_ID_REUSED: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.REQUEST_IN_PROGRESS: grpc.StatusCode.ABORTED,
    ErrorCode.UPLOAD_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UPLOAD_INCOMPLETE: grpc.StatusCode.ABORTED,
    ErrorCode.INTEGRITY_ERROR: grpc.StatusCode.DATA_LOSS,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}

# Violations of these codes are quotas (QuotaFailure), not bad fields (BadRequest).
QUOTA_CODES = frozenset({ErrorCode.PRIVACY_BUDGET_EXHAUSTED, ErrorCode.UPLOAD_TOO_LARGE})


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _grpc_status(status: status_pb2.Status) -> grpc.Status:
    """grpc_status ships no type information; its to_status returns a grpc.Status (typed here, once)."""
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


# A field path can carry the caller's own text ("spec.feature_columns[<name>]"): bounded, so that
# the details (sent as trailing metadata) stay under gRPC's 8 KiB metadata limit. Fuzzing sent a 1 MiB
# column name, and the client got "metadata size exceeds hard limit" instead of INVALID_ARGUMENT.
MAX_FIELD_BYTES, MAX_TEXT_BYTES, MAX_VIOLATION_BYTES = 200, 1000, 3000


def _bounded(text: str, limit: int) -> str:
    data = text.encode()
    return text if len(data) <= limit else data[:limit].decode(errors="ignore") + "…"


def _shown(violations: Sequence[FieldViolation]) -> list[tuple[str, str]]:
    """The violations that fit MAX_VIOLATION_BYTES, each bounded; at least the first."""
    shown: list[tuple[str, str]] = []
    total = 0
    for violation in violations:
        field, text = _bounded(violation.field, MAX_FIELD_BYTES), _bounded(violation.description, MAX_TEXT_BYTES)
        total += len(field.encode()) + len(text.encode())
        if shown and total > MAX_VIOLATION_BYTES:
            break
        shown.append((field, text))
    return shown


def to_status(error: CleanroomError) -> grpc.Status:
    grpc_code = CATALOG[error.code]
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.code.value, domain=DOMAIN))]
    shown = _shown(error.violations)
    if shown and error.code in QUOTA_CODES:
        quota = [error_details_pb2.QuotaFailure.Violation(subject=field, description=text) for field, text in shown]
        details.append(_pack(error_details_pb2.QuotaFailure(violations=quota)))
    elif shown:
        violations = [error_details_pb2.BadRequest.FieldViolation(field=field, description=text) for field, text in shown]
        details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=grpc_code.value[0], message=_bounded(error.message, MAX_TEXT_BYTES), details=details)
    return _grpc_status(status)


def internal_status(exc: BaseException, method: str) -> grpc.Status:
    reference = logs.request_id.get() or uuid.uuid4().hex[:12]
    log.error("unhandled error in %s (reference %s)", method, reference, exc_info=exc)
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error; quote reference {reference} to the operators",
        details=[_pack(error_details_pb2.ErrorInfo(reason=ErrorCode.INTERNAL.value, domain=DOMAIN))],
    )
    return _grpc_status(status)
