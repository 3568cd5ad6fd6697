"""One server interceptor that every call passes: decode, authenticate, authorise, map errors.

Servicers never call context.abort: they raise CleanroomError, and the guard turns it into a gRPC
status with structured details. Any other exception becomes INTERNAL with a reference id, so no
traceback ever reaches a caller. One exception is not a failure: gRPC itself ending a call while its
request stream is read (the client cancelled or its deadline passed, or it sent a message over the
receive limit, for which gRPC answered RESOURCE_EXHAUSTED); the client already has gRPC's status, so
the call is counted as CANCELLED (DEADLINE_EXCEEDED once the deadline has passed), without a traceback.

Authentication checks the presented token on every call (identity/tokens.py: a revocation holds on
the next call). A source address with too many failed authentications is refused before its token
is looked at (identity/ratelimit.py); a call without any token is no attempt and is not counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from cleanroom.api import auth
from cleanroom.api.errors import internal_status, to_status
from cleanroom.domain.credentials import EXPIRED_MESSAGE, TokenCheck, TokenState
from cleanroom.domain.errors import CleanroomError, ErrorCode, bad_request
from cleanroom.domain.idempotency import RequestKey
from cleanroom.domain.identity import Principal
from cleanroom.identity.ratelimit import FailureLimiter, source_of
from cleanroom.observability import logs

log = logging.getLogger(__name__)

Authenticator = Callable[[str], TokenCheck]
Observer = Callable[[str, str, float], None]  # (method, status code name, seconds)
AuthObserver = Callable[[str], None]  # a failed authentication's TokenState value, or "rate_limited"
RATE_LIMITED = "too many failed authentications from your address; retry after the delay in RetryInfo"


class _Malformed:
    """What the guarded deserializer returns for bytes that are not the expected message."""


MALFORMED = _Malformed()


class CallContext:
    """The gRPC context plus the authenticated principal. Everything else is delegated.

    Servicers receive it where gRPC's stubs say `grpc.ServicerContext` and read the principal with
    `caller(context)`."""

    def __init__(self, context: grpc.ServicerContext, principal: Principal | None) -> None:
        self._context = context
        self.principal = principal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def caller(context: grpc.ServicerContext) -> Principal:
    """The principal the guard authenticated and authorised for this call. A context that did not
    pass the guard has none: refused (fail closed), never served anonymously."""
    if not isinstance(context, CallContext) or context.principal is None:
        raise CleanroomError(ErrorCode.UNAUTHENTICATED, "a valid bearer token is required")
    return context.principal


def request_key(context: grpc.ServicerContext, method: str, request_id: str) -> RequestKey:
    """A retryable call's identity: who called, which method, which request_id."""
    return RequestKey(caller(context).id, method, request_id)


def _has_unknown_fields(message: Message) -> bool:
    if len(UnknownFieldSet(message)):
        return True
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None or descriptor.message_type.GetOptions().map_entry:
            continue
        values = value if descriptor.is_repeated else [value]
        if any(_has_unknown_fields(v) for v in values):
            return True
    return False


def _checked(request: Any) -> Any:
    if request is MALFORMED:
        raise bad_request("the request could not be decoded as the expected message")
    if _has_unknown_fields(request):
        raise bad_request("the request has fields this server does not know; check the client version")
    return request


def _safe_deserializer(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def guarded(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, ValueError):
            return MALFORMED

    return guarded


def _checked_stream(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        yield _checked(request)


class GuardInterceptor(grpc.ServerInterceptor):
    def __init__(self, authenticate: Authenticator, observe: Observer | None = None, *,
                 limiter: FailureLimiter | None = None, on_auth_failure: AuthObserver | None = None) -> None:
        self._authenticate = authenticate
        self._observe = observe or (lambda method, code, seconds: None)
        self._limiter = limiter
        self._on_auth_failure = on_auth_failure or (lambda what: None)
        self._wrapped: dict[str, Any] = {}  # method -> guarded handler: handlers never change once serving

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = continuation(details)
        if handler is None or auth.is_public(method):
            return handler
        wrapped = self._wrapped[method] = _wrap(handler, method, self._call_context, self._observe)
        return wrapped

    def _call_context(self, method: str, context: grpc.ServicerContext) -> CallContext:
        metadata = context.invocation_metadata()
        header = dict(metadata).get("x-request-id")  # text: only "-bin" headers carry bytes
        logs.request_id.set(logs.clean_request_id(header if isinstance(header, str) else None))
        context.set_trailing_metadata((("x-request-id", logs.request_id.get()),))
        token = auth.bearer_token(metadata)
        if token is None and method in auth.ANONYMOUS:
            # No token, so no guess at one: the source limit is for token guessing; a sign-in is
            # limited per username instead (the console signs everyone in from one address).
            return CallContext(context, None)
        source = source_of(context.peer())
        wait = self._limiter.blocked(source) if self._limiter else None
        if wait is not None:  # before the token is looked at: a blocked source costs no database read
            self._on_auth_failure("rate_limited")
            raise CleanroomError(ErrorCode.AUTH_RATE_LIMITED, RATE_LIMITED, retry_after=wait)
        principal = self._principal(token, source) if token else None
        return CallContext(context, auth.authorize(method, principal))

    def _principal(self, token: str, source: str) -> Principal:
        checked = self._authenticate(token)
        if checked.principal is not None:
            return checked.principal
        if self._limiter:
            self._limiter.failed(source)
        self._on_auth_failure(checked.state.value)
        # Never the token: why it failed and where from (what an operator blocks at the firewall).
        log.info("authentication failed", extra={"reason": checked.state.value, "source": source})
        if checked.state is TokenState.EXPIRED:
            raise CleanroomError(ErrorCode.UNAUTHENTICATED, EXPIRED_MESSAGE)
        raise CleanroomError(ErrorCode.UNAUTHENTICATED, auth.UNAUTHENTICATED)


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _with_request_id(status: grpc.Status) -> grpc.Status:
    """abort_with_status replaces the trailing metadata with the status's own (its details), which
    would drop the x-request-id set at the start of the call: carry it along."""
    request_id = logs.request_id.get()
    extra = (("x-request-id", request_id),) if request_id else ()
    return _Status(status.code, status.details, (*tuple(status.trailing_metadata or ()), *extra))


def _ended_by_grpc(error: grpc.RpcError, method: str, context: grpc.ServicerContext, observe: Observer, started: float) -> None:
    """Re-raises `error`, counted under the code gRPC ended the call with, when gRPC itself ended the
    call (reading the request stream raises it then, and gRPC has already sent the client its status:
    nothing is left to answer, and gRPC ends the call quietly on its own error). Returns for an
    RpcError from anywhere else while the call is still active: that is an internal failure."""
    if context.is_active():
        return
    remaining = context.time_remaining()
    code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    log.info("the call was ended by gRPC before it was answered", extra={"method": method, "code": code})
    observe(method, code, time.perf_counter() - started)
    raise error


def _wrap(handler: Any, method: str, make_context: Callable[[str, grpc.ServicerContext], CallContext], observe: Observer) -> Any:
    streaming_in, streaming_out = handler.request_streaming, handler.response_streaming
    behaviour = {
        (False, False): handler.unary_unary,
        (False, True): handler.unary_stream,
        (True, False): handler.stream_unary,
        (True, True): handler.stream_stream,
    }[(streaming_in, streaming_out)]

    def prepare(request: Any, context: grpc.ServicerContext) -> tuple[Any, CallContext]:
        call_context = make_context(method, context)
        return (_checked_stream(request) if streaming_in else _checked(request)), call_context

    def unary_response(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            response = behaviour(*prepare(request, context))
            observe(method, "OK", time.perf_counter() - started)
            return response
        except CleanroomError as error:
            status = to_status(error)
        except grpc.RpcError as exc:
            _ended_by_grpc(exc, method, context, observe, started)
            status = internal_status(exc, method)
        except Exception as exc:  # noqa: BLE001 - the one place where anything becomes INTERNAL
            status = internal_status(exc, method)
        observe(method, status.code.name, time.perf_counter() - started)
        context.abort_with_status(_with_request_id(status))

    def stream_response(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started = time.perf_counter()
        try:
            yield from behaviour(*prepare(request, context))
            observe(method, "OK", time.perf_counter() - started)
            return
        except CleanroomError as error:
            status = to_status(error)
        except grpc.RpcError as exc:
            _ended_by_grpc(exc, method, context, observe, started)
            status = internal_status(exc, method)
        except Exception as exc:  # noqa: BLE001
            status = internal_status(exc, method)
        observe(method, status.code.name, time.perf_counter() - started)
        context.abort_with_status(_with_request_id(status))

    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(streaming_in, streaming_out)]
    return factory(
        stream_response if streaming_out else unary_response,
        request_deserializer=_safe_deserializer(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )
