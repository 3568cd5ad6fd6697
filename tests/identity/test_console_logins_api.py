"""Console logins over real gRPC: a one-time code, then a password; wrong credentials, limits, sign-out."""

from __future__ import annotations

import grpc
import pytest

from cleanroom.domain.identity import Role
from cleanroom.sdk import CleanroomClientError


def _login(running, role: Role = Role.PRIVACY_OFFICER, username: str = "olivia.officer"):
    principal_id, _token = running.principal(role, "Olivia")
    with running.client(running.admin_token) as admin:
        made = admin.create_console_login(f"principals/{principal_id}", username)
    return principal_id, made


def test_a_code_signs_in_once_then_the_password_does(running) -> None:
    principal_id, made = _login(running)
    assert made.login.username == "olivia.officer" and not made.login.password_set and made.one_time_code
    with running.client() as anonymous:
        first = anonymous.sign_in("olivia.officer", one_time_code=made.one_time_code)
        assert first.must_set_password and first.principal.name == f"principals/{principal_id}"
        assert first.token.HasField("expire_time")
        with pytest.raises(CleanroomClientError) as reused:
            anonymous.sign_in("olivia.officer", one_time_code=made.one_time_code)
        assert reused.value.code is grpc.StatusCode.UNAUTHENTICATED
    with running.client(first.bearer_token) as session:
        assert session.whoami().name == f"principals/{principal_id}"
        with pytest.raises(CleanroomClientError) as short:
            session.set_console_password("short")
        assert short.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert session.set_console_password("correct horse battery").login.password_set
    with running.client() as anonymous:
        second = anonymous.sign_in("olivia.officer", password="correct horse battery")
    assert not second.must_set_password


def test_wrong_credentials_read_the_same_for_a_known_and_an_unknown_username(running) -> None:
    _login(running)
    messages = []
    with running.client() as anonymous:
        for username in ("olivia.officer", "nobody.here"):
            with pytest.raises(CleanroomClientError) as wrong:
                anonymous.sign_in(username, password="not the password at all")
            assert wrong.value.code is grpc.StatusCode.UNAUTHENTICATED
            messages.append(wrong.value.message)
    assert messages[0] == messages[1]


def test_repeated_failures_for_one_username_are_rate_limited_and_others_are_not(running) -> None:
    _principal, made = _login(running)
    with running.client() as anonymous:
        for _ in range(10):
            with pytest.raises(CleanroomClientError):
                anonymous.sign_in("olivia.officer", password="guess guess guess")
        with pytest.raises(CleanroomClientError) as limited:
            anonymous.sign_in("olivia.officer", one_time_code=made.one_time_code)  # even the right code waits
        assert limited.value.reason == "AUTH_RATE_LIMITED"
        _other, other = _login(running, Role.AUDITOR, "alex.auditor")
        assert anonymous.sign_in("alex.auditor", one_time_code=other.one_time_code).must_set_password


def test_sign_out_revokes_the_session_token_and_only_ones_own(running) -> None:
    _principal, made = _login(running)
    _other_id, other_made = _login(running, Role.AUDITOR, "alex.auditor")
    with running.client() as anonymous:
        mine = anonymous.sign_in("olivia.officer", one_time_code=made.one_time_code)
        theirs = anonymous.sign_in("alex.auditor", one_time_code=other_made.one_time_code)
    with running.client(mine.bearer_token) as session:
        with pytest.raises(CleanroomClientError) as foreign:
            session.sign_out(theirs.token.name)
        assert foreign.value.code is grpc.StatusCode.NOT_FOUND
        session.sign_out(mine.token.name)
        with pytest.raises(CleanroomClientError) as gone:
            session.whoami()
        assert gone.value.code is grpc.StatusCode.UNAUTHENTICATED


def test_a_username_belongs_to_one_principal_and_a_new_code_replaces_the_old(running) -> None:
    principal_id, first = _login(running)
    other_id, _token = running.principal(Role.AUDITOR)
    with running.client(running.admin_token) as admin:
        with pytest.raises(CleanroomClientError) as taken:
            admin.create_console_login(f"principals/{other_id}", "olivia.officer")
        assert taken.value.code is grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(CleanroomClientError) as bad:
            admin.create_console_login(f"principals/{other_id}", "Has Spaces")
        assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT
        second = admin.create_console_login(f"principals/{principal_id}", "olivia.officer")
    assert second.one_time_code != first.one_time_code
    with running.client() as anonymous:
        with pytest.raises(CleanroomClientError):
            anonymous.sign_in("olivia.officer", one_time_code=first.one_time_code)
        assert anonymous.sign_in("olivia.officer", one_time_code=second.one_time_code).must_set_password
