"""Tokens over gRPC on a real port (issue, revoke, list, expiry, the lock-out rule, bad input, roles)
and the failed-authentication limit, on clocks the tests move instead of sleeping."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from sqlalchemy import select

from cleanroom.api.server import Server
from cleanroom.domain.identity import Role
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.server.app import build_app
from cleanroom.storage.tables import AuditEntryRow
from cleanroom.v1 import identity_pb2
from tests.conftest import Running, internal_calls, make_config


def _refused(call) -> CleanroomClientError:  # type: ignore[no-untyped-def]
    with pytest.raises(CleanroomClientError) as caught:
        call()
    return caught.value


def _counter(running: Running, name: str, **labels: str) -> float:
    value = running.app.metrics.registry.get_sample_value(name, labels)
    return float(value or 0)


def test_an_issued_token_works_is_never_listed_and_a_retry_shows_the_same_one(running: Running) -> None:
    with running.client(running.admin_token) as admin:
        maker = admin.create_principal("maker", "manufacturer")
        first = admin.issue_token(maker.principal.name, lifetime=timedelta(days=30), request_id="issue-1")
        again = admin.issue_token(maker.principal.name, lifetime=timedelta(days=30), request_id="issue-1")
        assert again.token == first.token and again.bearer_token == first.bearer_token
        assert first.bearer_token.startswith("crt_") and first.bearer_token != maker.token
        listed = list(admin.list_tokens(maker.principal.name))
        assert first.token.name in {t.name for t in listed} and len(listed) == 2
        assert all(not t.HasField("revoke_time") for t in listed)
        assert first.bearer_token not in str(listed) and maker.token not in str(listed)
        assert first.token.created_by == admin.whoami().name
        created = first.token.create_time.ToDatetime(UTC)
        assert first.token.expire_time.ToDatetime(UTC) - created == timedelta(days=30)
    for token in (maker.token, first.bearer_token):
        with running.client(token) as client:
            assert client.whoami().name == maker.principal.name
    with running.app.db.read() as session:
        issued = session.scalars(select(AuditEntryRow.target).where(AuditEntryRow.action == "token.issue")).all()
    assert issued == [first.token.name]  # audited once, however many retries


def test_a_revoked_token_fails_on_the_next_call(running: Running) -> None:
    with running.client(running.admin_token) as admin:
        owner = admin.create_principal("owner", "data_owner")
        with running.client(owner.token) as hospital:
            assert hospital.whoami().name == owner.principal.name
            [record] = list(admin.list_tokens(owner.principal.name))
            revoked = admin.revoke_token(record.name)
            assert revoked.HasField("revoke_time")
            error = _refused(hospital.whoami)
            assert error.code is grpc.StatusCode.UNAUTHENTICATED and "expired" not in error.message
            assert admin.revoke_token(record.name).revoke_time == revoked.revoke_time  # again: answered as it is
    assert _counter(running, "cleanroom_auth_failures_total", reason="revoked") == 1


def test_an_expired_token_says_it_expired(running: Running) -> None:
    """The token service's clock is moved past the expiry; no sleeping."""
    tokens = running.app.principals.tokens
    with running.client(running.admin_token) as admin:
        maker = admin.create_principal("maker", "manufacturer", token_lifetime=timedelta(minutes=5))
    with running.client(maker.token) as client:
        assert client.whoami().name == maker.principal.name
        moved = datetime.now(UTC) + timedelta(minutes=5, seconds=1)
        tokens.now = lambda: moved
        error = _refused(client.whoami)
    assert error.code is grpc.StatusCode.UNAUTHENTICATED and error.reason == "UNAUTHENTICATED"
    assert "expired" in error.message and maker.token not in error.message
    assert _counter(running, "cleanroom_auth_failures_total", reason="expired") == 1


def test_the_last_working_admin_token_is_not_revoked_without_a_replacement(running: Running) -> None:
    with running.client(running.admin_token) as admin:
        me = admin.whoami().name
        error = _refused(lambda: admin.revoke_tokens_of(me))
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION and "another admin token" in error.message
        replacement = admin.issue_token(me)
    with running.client(replacement.bearer_token) as admin:
        [old] = [t for t in admin.list_tokens(me) if t.name != replacement.token.name]
        assert admin.revoke_token(old.name).HasField("revoke_time")
        assert admin.whoami().name == me
    with running.client(running.admin_token) as old_admin:
        assert _refused(old_admin.whoami).code is grpc.StatusCode.UNAUTHENTICATED


def test_only_admins_issue_revoke_and_list(running: Running) -> None:
    for role in (r for r in Role if r is not Role.ADMIN):
        principal_id, token = running.principal(role)
        name = f"principals/{principal_id}"
        with running.client(token) as other:
            for call in (lambda: other.issue_token(name), lambda: other.revoke_tokens_of(name), lambda: list(other.list_tokens())):  # noqa: B023 - called at once
                assert _refused(call).code is grpc.StatusCode.PERMISSION_DENIED, role
            assert other.whoami().name == name  # nothing was revoked


def _raw(running: Running, method: str, request, response_type):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(running.address) as channel:
        call = channel.unary_unary(f"/cleanroom.v1.AdminService/{method}", request_serializer=type(request).SerializeToString,
                                   response_deserializer=response_type.FromString)
        try:
            call(request, metadata=(("authorization", f"Bearer {running.admin_token}"),), timeout=30)
        except grpc.RpcError as error:
            from cleanroom.sdk.errors import from_rpc_error

            return from_rpc_error(error)
    raise AssertionError("the call was answered")


BAD = [
    ("IssueToken", identity_pb2.IssueTokenRequest(request_id="r1", principal="principals/p1", lifetime=Duration(seconds=-5)),
     grpc.StatusCode.INVALID_ARGUMENT, "lifetime"),
    ("IssueToken", identity_pb2.IssueTokenRequest(request_id="r2", principal="principals/p1", lifetime=Duration()),
     grpc.StatusCode.INVALID_ARGUMENT, "lifetime"),
    ("IssueToken", identity_pb2.IssueTokenRequest(request_id="r3", principal="principals/p1", lifetime=Duration(seconds=10**12)),
     grpc.StatusCode.INVALID_ARGUMENT, "lifetime"),
    ("IssueToken", identity_pb2.IssueTokenRequest(request_id="r4", principal="tokens/t1"), grpc.StatusCode.INVALID_ARGUMENT, "principal"),
    ("IssueToken", identity_pb2.IssueTokenRequest(request_id="r5", principal="principals/pnobody"), grpc.StatusCode.NOT_FOUND, None),
    ("RevokeToken", identity_pb2.RevokeTokenRequest(request_id="r6", token="tokens/tnobody"), grpc.StatusCode.NOT_FOUND, None),
    ("RevokeToken", identity_pb2.RevokeTokenRequest(request_id="r7", token="principals/p1"), grpc.StatusCode.INVALID_ARGUMENT, "token"),
    ("RevokeToken", identity_pb2.RevokeTokenRequest(request_id="r8"), grpc.StatusCode.INVALID_ARGUMENT, "token"),
    ("RevokeToken", identity_pb2.RevokeTokenRequest(request_id="r9", principal="principals/pnobody"), grpc.StatusCode.NOT_FOUND, None),
    ("RevokeToken", identity_pb2.RevokeTokenRequest(request_id="\x00", token="tokens/t1"), grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
    ("ListTokens", identity_pb2.ListTokensRequest(principal="principals/pnobody"), grpc.StatusCode.NOT_FOUND, None),
    ("ListTokens", identity_pb2.ListTokensRequest(page_size=-1), grpc.StatusCode.INVALID_ARGUMENT, "page_size"),
    ("CreatePrincipal", identity_pb2.CreatePrincipalRequest(request_id="r10", display_name="x", role=1, token_lifetime=Duration(nanos=-1)),
     grpc.StatusCode.INVALID_ARGUMENT, "token_lifetime"),
]


def test_bad_input_is_refused_with_its_field_and_stores_nothing(running: Running) -> None:
    """One server for every case: what each answers must not depend on the others (nothing is stored)."""
    with running.client(running.admin_token) as admin:
        before = list(admin.list_tokens())
        for method, request_message, code, field in BAD:
            error = _raw(running, method, request_message, identity_pb2.IssueTokenResponse)
            assert error.code is code, (method, request_message, error)
            if field is not None:
                assert [v.field for v in error.violations] == [field], (method, request_message)
            assert "Traceback" not in error.message and "/tmp" not in error.message
        assert list(admin.list_tokens()) == before


class Ticks:
    def __init__(self) -> None:
        self.at = 0.0

    def __call__(self) -> float:
        return self.at


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[tuple[Running, Ticks]]:
    """A server that allows 3 failed authentications per 60 s from one address, on a clock the test moves."""
    ticks = Ticks()
    app = build_app(make_config(tmp_path / "state", auth_failure_limit=3, auth_failure_window=60.0))
    server = Server(app, auth_clock=ticks)
    server.start()
    _, admin_token = app.principals.create("first admin", Role.ADMIN, actor="test")
    yield Running(app, server, f"127.0.0.1:{server.port}", admin_token), ticks
    server.stop(grace=0)
    assert internal_calls(app) == {}


def test_failed_authentications_block_the_source_until_the_window_passes(limited: tuple[Running, Ticks]) -> None:
    running, ticks = limited
    with Client(running.address, running.admin_token) as admin, Client(running.address, "crt_guessed-not-issued") as guesser:
        for _ in range(20):
            admin.whoami()  # successful calls never count
        for _ in range(3):
            assert _refused(guesser.whoami).code is grpc.StatusCode.UNAUTHENTICATED
        ticks.at = 30.0
        for client in (guesser, admin):  # every call from the address, a valid token too, without looking at it
            error = _refused(client.whoami)
            assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == "AUTH_RATE_LIMITED"
            assert error.retry_after == pytest.approx(30, abs=0.01)
        assert _counter(running, "cleanroom_auth_failures_total", reason="unknown") == 3  # the blocked calls checked no token
        assert _counter(running, "cleanroom_auth_rate_limited_total") == 2
        ticks.at = 60.0
        assert admin.whoami().name.startswith("principals/")
    text = "\n".join(str(sample) for metric in running.app.metrics.registry.collect() for sample in metric.samples)
    assert "crt_" not in text  # no token in any label


def test_anonymous_calls_are_not_authentication_attempts(limited: tuple[Running, Ticks]) -> None:
    running, _ = limited
    with Client(running.address) as anonymous, Client(running.address, running.admin_token) as admin:
        for _ in range(10):
            assert _refused(anonymous.whoami).code is grpc.StatusCode.UNAUTHENTICATED
        assert admin.whoami().name.startswith("principals/")
