"""What every call carries whatever its outcome (docs/api): the request id in the trailers on errors
too, the bearer scheme in any case, and reflection in both versions clients use."""

from __future__ import annotations

import re

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cleanroom.api import auth
from cleanroom.domain.identity import Role
from cleanroom.v1 import common_pb2, identity_pb2, jobs_pb2

WHOAMI = "/cleanroom.v1.IdentityService/WhoAmI"
WATCH = "/cleanroom.v1.JobService/WatchJob"


def whoami(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> tuple[identity_pb2.Principal, grpc.Call]:
    call = channel.unary_unary(WHOAMI, identity_pb2.WhoAmIRequest.SerializeToString, identity_pb2.Principal.FromString)
    return call.with_call(identity_pb2.WhoAmIRequest(), metadata=metadata, timeout=10)


def error_of(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    return raised.value


def reason_of(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error lost its details"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason


# --------------------------------------------------------------------------- x-request-id on errors


def test_request_id_comes_back_on_an_error_beside_the_details(running) -> None:
    with grpc.insecure_channel(running.address) as channel:
        error = error_of(lambda: whoami(channel, (("x-request-id", "trace-err-1"),)))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert ("x-request-id", "trace-err-1") in error.trailing_metadata()
    assert reason_of(error) == "UNAUTHENTICATED"


def test_a_made_up_request_id_comes_back_on_an_error_from_a_stream(running) -> None:
    _, token = running.principal(Role.MANUFACTURER)
    with grpc.insecure_channel(running.address) as channel:
        watch = channel.unary_stream(WATCH, jobs_pb2.WatchJobRequest.SerializeToString, jobs_pb2.Job.FromString)
        error = error_of(lambda: list(watch(jobs_pb2.WatchJobRequest(name="jobs/missing"), metadata=(("authorization", f"Bearer {token}"),), timeout=10)))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    made_up = dict(error.trailing_metadata()).get("x-request-id", "")
    assert re.fullmatch(r"[0-9a-f]{32}", made_up), error.trailing_metadata()
    assert reason_of(error) == "NOT_FOUND"


# --------------------------------------------------------------------------- the bearer scheme


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(running, scheme: str) -> None:
    with grpc.insecure_channel(running.address) as channel:
        principal, _ = whoami(channel, (("authorization", f"{scheme} {running.admin_token}"),))
    assert principal.role == common_pb2.ADMIN


@pytest.mark.parametrize("value", ["Basic abc", "Bearer", "Bearer ", "Bearerx crt_abc", "crt_abc", "Token crt_abc"])
def test_other_authorization_values_carry_no_token(value: str) -> None:
    assert auth.bearer_token([("authorization", value)]) is None


def test_spaces_around_the_token_are_ignored() -> None:
    assert auth.bearer_token([("authorization", "bearer   crt_abc  ")]) == "crt_abc"


# --------------------------------------------------------------------------- reflection


def list_services(channel: grpc.Channel, version: str) -> set[str]:
    """ServerReflectionInfo with list_services, spoken in raw bytes so that both versions go through
    the same client code (their messages are the same on the wire)."""
    from grpc_reflection.v1alpha import reflection_pb2

    path = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    call = channel.stream_stream(path, reflection_pb2.ServerReflectionRequest.SerializeToString, reflection_pb2.ServerReflectionResponse.FromString)
    responses = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    return {service.name for response in responses for service in response.list_services_response.service}


def describe(channel: grpc.Channel, version: str, symbol: str) -> list[bytes]:
    from grpc_reflection.v1alpha import reflection_pb2

    path = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    call = channel.stream_stream(path, reflection_pb2.ServerReflectionRequest.SerializeToString, reflection_pb2.ServerReflectionResponse.FromString)
    (response,) = list(call(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)]), timeout=10))
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    return list(response.file_descriptor_response.file_descriptor_proto)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_answers_in_both_versions_without_a_token(running, version: str) -> None:
    with grpc.insecure_channel(running.address) as channel:
        names = list_services(channel, version)
        assert {"cleanroom.v1.JobService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection"} <= names
        assert describe(channel, version, "cleanroom.v1.JobService")
        assert describe(channel, version, "grpc.reflection.v1.ServerReflection")
