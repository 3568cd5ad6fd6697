"""Long-lived sessions on every backend that hosts them (the registry's `sessions`), for real:
bubblewrap and gVisor (runsc --platform=ptrace). Frames in order, no state directory and no
network inside, the wall clock kills the whole sandbox, and a session that cannot be set up fails
as SessionBroken. The statistics worker itself under gVisor: tests/server/test_statistics_backends.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from cleanroom.sandbox import backends
from cleanroom.sandbox.base import SandboxPolicy, SandboxRequest
from cleanroom.sandbox.session import SandboxSession, SessionBroken, SessionHost
from tests import tools
from tests.processes import running

SESSION_BACKENDS = sorted(b.name for b in backends.BACKENDS if b.sessions is not None)
CANARY = "CANARY-0b5d-session-state-secret"

# Answers each frame with what it could reach, after the pause the frame asks for.
PROBE = """
import json, os, socket, time
from cleanroom.sandbox.session import read_frame, write_frame
out = os.dup(1)
while (frame := read_frame(0)) is not None:
    ask = json.loads(frame)
    time.sleep(ask.get("pause", 0))
    found = {"n": ask.get("n")}
    if "canary" in ask:
        try:
            found["canary"] = open(ask["canary"]).read()
        except OSError as exc:
            found["canary_error"] = type(exc).__name__
    if "port" in ask:
        try:
            socket.create_connection(("127.0.0.1", ask["port"]), timeout=2).sendall(b"exfiltrated")
            found["network"] = "connected"
        except OSError as exc:
            found["network_error"] = type(exc).__name__
    found["input"] = open("/in/job/allowed.txt").read()
    write_frame(out, json.dumps(found).encode())
"""


def test_the_registry_says_which_backends_host_sessions_and_why_not() -> None:
    assert {"bwrap", "runsc"} <= set(SESSION_BACKENDS)
    for backend in backends.BACKENDS:
        assert (backend.sessions is None) == bool(backend.no_sessions), backend.name


@pytest.fixture(scope="module", params=SESSION_BACKENDS)
def host(request: pytest.FixtureRequest) -> SessionHost:
    backend = backends.get(request.param)
    assert backend.sessions is not None
    chosen = backend.sessions(backends.Placement())
    ok, why = chosen.available()
    if not ok:
        tools.missing(request.param, f"does not work here: {why}")
    return chosen


@pytest.fixture
def state(tmp_path: Path) -> Path:
    folder = tmp_path / "state"
    folder.mkdir()
    (folder / "secret.txt").write_text(CANARY)
    return folder


def _session(host: SessionHost, tmp_path: Path, state: Path, policy: SandboxPolicy) -> SandboxSession:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "allowed.txt").write_text("public input")
    backend = backends.get(host.name)
    assert backend.sessions is not None
    guarded = backend.sessions(backends.Placement(deny=(state,)))  # the state directory is never mountable
    request = SandboxRequest(argv=("python3", "-c", PROBE), inputs={"job": inputs})
    return SandboxSession(guarded, request, policy)


def test_frames_are_answered_in_order_and_nothing_outside_is_reachable(host: SessionHost, tmp_path: Path, state: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    session = _session(host, tmp_path, state, SandboxPolicy(wall_seconds=120))
    answers: dict[int, dict[str, object]] = {}
    try:
        assert session.backend == host.name
        target = {"canary": str(state / "secret.txt"), "port": listener.getsockname()[1]}
        found = json.loads(session.call(json.dumps({"n": -1, **target}).encode(), timeout=60))
        assert "canary" not in found and "network" not in found and found["input"] == "public input"

        def ask(n: int) -> None:
            answers[n] = json.loads(session.call(json.dumps({"n": n, "pause": 0.01 * (n % 3)}).encode(), timeout=60))

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {n: a["n"] for n, a in answers.items()} == {n: n for n in range(12)}
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing ever connected
    finally:
        session.close()
        listener.close()
    assert not session.alive


def test_the_wall_clock_kills_the_whole_sandbox(host: SessionHost, tmp_path: Path, state: Path) -> None:
    session = _session(host, tmp_path, state, SandboxPolicy(wall_seconds=3.0))
    pid = session._proc.pid  # noqa: SLF001 - the launcher-side process of the sandbox
    deadline = time.monotonic() + 30
    while session.alive and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not session.alive
    while running(pid) and time.monotonic() < deadline:  # close() is still reaping
        time.sleep(0.1)
    assert not running(pid)
    with pytest.raises(SessionBroken):
        session.call(b"{}", timeout=1)


def test_a_session_that_cannot_be_set_up_is_broken(host: SessionHost, tmp_path: Path, state: Path) -> None:
    backend = backends.get(host.name)
    assert backend.sessions is not None
    guarded = backend.sessions(backends.Placement(deny=(state,)))
    request = SandboxRequest(argv=("python3", "-c", "pass"), inputs={"job": state})  # the state directory: refused
    with pytest.raises(SessionBroken, match="cannot set up"):
        SandboxSession(guarded, request, SandboxPolicy(wall_seconds=30))
