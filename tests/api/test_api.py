"""gRPC API over a real port: the role matrix, errors with details, idempotency, health, reflection."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from cleanroom.api import auth
from cleanroom.domain.identity import Role
from cleanroom.sdk import CleanroomClientError
from cleanroom.v1 import datasets_pb2, identity_pb2, jobs_pb2, models_pb2, models_pb2_grpc, privacy_pb2, releases_pb2, stats_pb2

SERVICES = [
    identity_pb2.DESCRIPTOR.services_by_name["AdminService"],
    identity_pb2.DESCRIPTOR.services_by_name["IdentityService"],
    datasets_pb2.DESCRIPTOR.services_by_name["DatasetService"],
    privacy_pb2.DESCRIPTOR.services_by_name["PrivacyService"],
    privacy_pb2.DESCRIPTOR.services_by_name["AuditService"],
    models_pb2.DESCRIPTOR.services_by_name["AttestationService"],
    models_pb2.DESCRIPTOR.services_by_name["ModelService"],
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"],
    stats_pb2.DESCRIPTOR.services_by_name["StatsService"],
    releases_pb2.DESCRIPTOR.services_by_name["ReleaseService"],
]
ALL_METHODS = [(s, m) for s in SERVICES for m in s.methods]


def _path(service, method) -> str:
    return f"/{service.full_name}/{method.name}"


def test_every_rpc_has_an_explicit_rule_and_no_rule_is_stale() -> None:
    paths = {_path(s, m) for s, m in ALL_METHODS}
    assert paths == set(auth.RULES)


def _call(channel: grpc.Channel, service, method, token: str | None) -> grpc.StatusCode:
    """Calls a method with an empty request (or an empty stream) and returns the status code."""
    path = _path(service, method)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    identity = lambda b: b  # noqa: E731 - raw bytes both ways
    try:
        if method.client_streaming:
            channel.stream_unary(path, identity, identity)(iter([b""]), metadata=metadata, timeout=10)
        elif method.server_streaming:
            list(channel.unary_stream(path, identity, identity)(b"", metadata=metadata, timeout=10))
        else:
            channel.unary_unary(path, identity, identity)(b"", metadata=metadata, timeout=10)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("role", [None, *Role], ids=lambda r: r.value if r else "anonymous")
def test_role_matrix(running, role) -> None:
    token = running.principal(role)[1] if role else None
    with grpc.insecure_channel(running.address) as channel:
        for service, method in ALL_METHODS:
            code = _call(channel, service, method, token)
            allowed = role is not None and role in auth.RULES[_path(service, method)]
            if role is None and _path(service, method) in auth.ANONYMOUS:
                assert code is grpc.StatusCode.INVALID_ARGUMENT, method.name  # served, and the empty request refused
            elif role is None:
                assert code is grpc.StatusCode.UNAUTHENTICATED, method.name
            elif not allowed:
                assert code is grpc.StatusCode.PERMISSION_DENIED, (role, method.name)
            else:
                assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), (role, method.name)
                assert code is not grpc.StatusCode.INTERNAL, (role, method.name)


def test_a_wrong_token_is_unauthenticated(running) -> None:
    with running.client("crt_not-a-real-token") as client, pytest.raises(CleanroomClientError) as err:
        client.whoami()
    assert err.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert err.value.reason == "UNAUTHENTICATED"


def test_created_principal_token_works_and_retry_is_idempotent(running) -> None:
    with running.client(running.admin_token) as admin:
        first = admin.create_principal("Seoul General", "data_owner", request_id="req-1")
        again = admin.create_principal("Seoul General", "data_owner", request_id="req-1")
        assert again.principal == first.principal and again.token == first.token
        names = [p.name for p in admin.list_principals()]
        assert names.count(first.principal.name) == 1
        with pytest.raises(CleanroomClientError) as err:
            admin.create_principal("Someone else", "auditor", request_id="req-1")
        assert err.value.code is grpc.StatusCode.ALREADY_EXISTS
    with running.client(first.token) as owner:
        me = owner.whoami()
    assert me.name == first.principal.name and me.role == first.principal.role


def test_bad_argument_has_field_violations(running) -> None:
    with grpc.insecure_channel(running.address) as channel:
        stub = channel.unary_unary(
            "/cleanroom.v1.AdminService/CreatePrincipal",
            identity_pb2.CreatePrincipalRequest.SerializeToString,
            identity_pb2.CreatePrincipalResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as err:
            stub(identity_pb2.CreatePrincipalRequest(display_name="x"), metadata=(("authorization", f"Bearer {running.admin_token}"),))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err.value)
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details if d.Is(bad.DESCRIPTOR))
    assert [v.field for v in bad.field_violations] == ["role"]


def _raw_admin_call(running, payload: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(running.address) as channel:
        call = channel.unary_unary("/cleanroom.v1.AdminService/CreatePrincipal", lambda b: b, lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            call(payload, metadata=(("authorization", f"Bearer {running.admin_token}"),))
    return err.value


def test_unknown_fields_are_refused(running) -> None:
    valid = identity_pb2.CreatePrincipalRequest(display_name="x", role=1).SerializeToString()
    error = _raw_admin_call(running, valid + bytes([0xF8, 0x3E, 0x01]))  # field 999, varint 1
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "fields this server does not know" in error.details()


def test_malformed_bytes_are_invalid_argument_not_internal(running) -> None:
    error = _raw_admin_call(running, b"\x0a\xff\xff\xff")  # a length past the end
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "Traceback" not in error.details()


def test_pagination_walks_every_principal_once(running) -> None:
    for i in range(7):
        running.principal(Role.AUDITOR, f"auditor {i}")
    with running.client(running.admin_token) as admin:
        names = [p.name for p in admin.list_principals(page_size=3)]
    assert len(names) == 8 and len(set(names)) == 8  # 7 auditors + the first admin


def test_bad_page_token(running) -> None:
    with running.client(running.admin_token) as admin, pytest.raises(CleanroomClientError) as err:
        admin._call(admin.admin.ListPrincipals, identity_pb2.ListPrincipalsRequest(page_token="%%%"))
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_reflection_are_served(running) -> None:
    with grpc.insecure_channel(running.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="cleanroom.v1.DatasetService"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"cleanroom.v1.DatasetService", "cleanroom.v1.AdminService", "grpc.health.v1.Health"} <= names


def test_trust_bundle_pins_the_state_directorys_root(running) -> None:
    with grpc.insecure_channel(running.address) as channel:
        stub = models_pb2_grpc.AttestationServiceStub(channel)
        bundle = stub.GetTrustBundle(models_pb2.GetTrustBundleRequest(), metadata=(("authorization", f"Bearer {running.admin_token}"),))
    assert bundle.simulated is True
    assert bundle.root_public_key_pem == running.app.enclave.root.public_key_pem().decode()
    assert list(bundle.allowed_measurements) == [running.app.enclave.measurement]
    key_file = running.app.config.state_dir / "enclave" / "root"
    assert all(p.stat().st_mode & 0o077 == 0 for p in key_file.iterdir())
