"""Client-side view of a server error: code, readable message, reason and field violations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class Violation:
    field: str
    description: str


class CleanroomClientError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", violations: tuple[Violation, ...] = (),
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.violations = violations
        self.retry_after = retry_after  # seconds, from google.rpc.RetryInfo (AUTH_RATE_LIMITED)

    def __str__(self) -> str:
        lines = [f"{self.code.name}: {self.message}"]
        lines += [f"  - {v.field}: {v.description}" for v in self.violations]
        return "\n".join(lines)


def from_rpc_error(error: grpc.RpcError) -> CleanroomClientError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    reason, violations, retry_after = "", list[Violation](), None
    details: Sequence[Any] = status.details if status else ()  # google.rpc protos: untyped
    for detail in details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [Violation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            violations += [Violation(v.subject, v.description) for v in quota.violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    return CleanroomClientError(code, message or "", reason, tuple(violations), retry_after)
