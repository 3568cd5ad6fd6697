"""Two real `cleanroom serve` replicas on one state directory and database: a token revoked through
one (with the CLI) fails on the very next call through the other; a token with a 1 s lifetime
expires on both, saying so; the failed-authentication limit is per replica."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from cleanroom.cli.main import main
from cleanroom.crypto import LocalKeyFileProvider
from cleanroom.domain.identity import Role
from cleanroom.identity.keyring import KeyService
from cleanroom.identity.principals import PrincipalService
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.storage.db import Database, migrate
from tests.processes import serve
from tests.tools import needs

pytestmark = needs("bwrap")  # `serve` refuses to start without its sandbox backend (tests/tools.py)

EXPIRY_POLLS = 600  # a bound by count: each poll is a call plus 0.1 s, so at least 60 s for a 1 s lifetime to pass


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Killed, not stopped gracefully: nothing here outlives the test (its database is dropped), and a
    graceful stop costs seconds of the suite's budget."""
    for process in processes:
        if process.poll() is None:
            process.kill()
    for process in processes:
        process.wait(timeout=60)


def _first_admin(state: Path, database_url: str) -> str:
    """What `cleanroom admin bootstrap` does, in this process (it would cost an interpreter start-up)."""
    state.mkdir(mode=0o700)
    db = Database(database_url)
    try:
        migrate(db.engine)
        return PrincipalService(db, KeyService(db, LocalKeyFileProvider(state))).create("admin", Role.ADMIN, actor="local-bootstrap")[1]
    finally:
        db.dispose()


def _replicas(state: Path, log: Path, flags: tuple[str, ...], servers: list[subprocess.Popen[bytes]]) -> list[str]:
    """Replica A (default limits) and B (3 failed authentications per 600 s), started side by side."""
    extra = {"a": (), "b": ("--auth-failure-limit", "3", "--auth-failure-window", "600")}
    with ThreadPoolExecutor(2) as pool:
        started = list(pool.map(lambda n: serve(state, log, *flags, *extra[n], port_name=f"port-{n}"), extra))
    servers += [process for process, _ in started]
    return [address for _, address in started]


def _refusal(client: Client) -> CleanroomClientError:
    with pytest.raises(CleanroomClientError) as caught:
        client.whoami()
    return caught.value


def _cli(capsys: pytest.CaptureFixture[str], address: str, token: str, *args: str) -> str:
    """`cleanroom admin token ...` in this process (the command's own code, without another interpreter's start-up)."""
    capsys.readouterr()
    assert main(["--server", address, "--token", token, "admin", "token", *args]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def _until_expired(client: Client) -> CleanroomClientError:
    for _ in range(EXPIRY_POLLS):
        try:
            client.whoami()
        except CleanroomClientError as error:
            return error
        time.sleep(0.1)
    raise AssertionError("a token with a 1 s lifetime still worked after 600 polls")


@pytest.mark.timeout(300)
@pytest.mark.postgres
def test_revocation_and_expiry_hold_on_every_replica(tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    state, log = tmp_path / "state", tmp_path / "servers.log"
    flags = ("--database-url", postgres_url)  # replicas share a PostgreSQL database in production
    admin_token = _first_admin(state, postgres_url)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        at_a, at_b = _replicas(state, log, flags, servers)
        with Client(at_a, admin_token) as admin:
            maker = admin.create_principal("maker", "manufacturer")
            short = admin.issue_token(maker.principal.name, lifetime=timedelta(seconds=1))
        with Client(at_b, maker.token) as on_b:
            assert on_b.whoami().name == maker.principal.name  # B checks the token A's admin made

            # Revoked through A, with the CLI: the next call through B fails.
            listed = _cli(capsys, at_a, admin_token, "list", "--principal", maker.principal.name)
            first = next(line.split()[0] for line in listed.splitlines() if line.startswith("tokens/") and short.token.name not in line)
            assert maker.token not in listed and short.bearer_token not in listed
            assert f"revoked {first}" in _cli(capsys, at_a, admin_token, "revoke", first)
            revoked = _refusal(on_b)
            assert revoked.code is grpc.StatusCode.UNAUTHENTICATED and "expired" not in revoked.message

        # Expired: on either replica, UNAUTHENTICATED saying the token expired.
        for address in (at_a, at_b):
            with Client(address, short.bearer_token) as holder:
                expired = _until_expired(holder)
                assert expired.code is grpc.StatusCode.UNAUTHENTICATED and "expired" in expired.message, expired

        # B allows 3 failed authentications per 600 s (it has seen 2: the revoked and the expired token).
        with Client(at_b, "crt_never-issued") as guesser, Client(at_b, admin_token) as admin_b, Client(at_a, admin_token) as admin_a:
            assert _refusal(guesser).code is grpc.StatusCode.UNAUTHENTICATED
            limited = _refusal(admin_b)  # a valid token, refused without being looked at
            assert limited.code is grpc.StatusCode.RESOURCE_EXHAUSTED and limited.reason == "AUTH_RATE_LIMITED"
            assert limited.retry_after is not None and 0 < limited.retry_after <= 600
            assert admin_a.whoami().name.startswith("principals/")  # per replica: A still answers
    finally:
        _stop(servers)
    assert "Traceback" not in log.read_text()
