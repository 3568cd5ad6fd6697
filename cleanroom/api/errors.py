"""The error catalog: ErrorCode -> gRPC status, with google.rpc details.

Callers get the CleanroomError's message (written to be safe and readable), a BadRequest with its
field violations, and an ErrorInfo whose reason is the code, so clients can branch on it. Anything
that is not a CleanroomError becomes INTERNAL with a reference id; its details stay in the log.
"""

from __future__ import annotations

import logging
import uuid

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.observability import logs

log = logging.getLogger(__name__)

DOMAIN = "cleanroom.v1"

CATALOG: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.SENSITIVE_DATA_FOUND: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
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


def to_status(error: CleanroomError) -> grpc.Status:
    grpc_code = CATALOG[error.code]
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.code.value, domain=DOMAIN))]
    if error.violations and error.code in QUOTA_CODES:
        quota = [error_details_pb2.QuotaFailure.Violation(subject=v.field, description=v.description) for v in error.violations]
        details.append(_pack(error_details_pb2.QuotaFailure(violations=quota)))
    elif error.violations:
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in error.violations
        ]
        details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
    status = status_pb2.Status(code=grpc_code.value[0], message=error.message, details=details)
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
