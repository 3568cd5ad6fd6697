"""The long-lived sandbox the statistics worker runs in, attacked from inside for real."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from cleanroom.sandbox.base import SandboxPolicy, SandboxRequest
from cleanroom.sandbox.bwrap import BubblewrapLauncher
from cleanroom.sandbox.session import SandboxSession, SessionBroken
from tests.processes import running
from tests.tools import needs

pytestmark = needs("bwrap")

CANARY = "CANARY-7f3e9a1c-state-secret"

# Answers each frame with what it could reach: the state directory's canary, the host's
# listening socket, and the input it was given (which it may read).
ATTACK = """
import json, os, socket, sys
from cleanroom.sandbox.session import read_frame, write_frame
out = os.dup(1)
while (frame := read_frame(0)) is not None:
    target = json.loads(frame)
    found = {}
    try:
        found["canary"] = open(target["canary"]).read()
    except OSError as exc:
        found["canary_error"] = type(exc).__name__
    try:
        s = socket.create_connection(("127.0.0.1", target["port"]), timeout=2)
        s.sendall(b"exfiltrated")
        found["network"] = "connected"
    except OSError as exc:
        found["network_error"] = type(exc).__name__
    found["input"] = open("/in/job/allowed.txt").read()
    write_frame(out, json.dumps(found).encode())
"""


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    yield server
    server.close()


def _session(tmp_path: Path, state: Path, policy: SandboxPolicy) -> SandboxSession:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "allowed.txt").write_text("public input")
    request = SandboxRequest(argv=("python3", "-c", ATTACK), inputs={"job": inputs})
    return SandboxSession(BubblewrapLauncher(deny=[state]), request, policy)


def test_the_worker_sandbox_reaches_neither_the_state_directory_nor_the_network(tmp_path, listener) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "secret.txt").write_text(CANARY)
    session = _session(tmp_path, state, SandboxPolicy(wall_seconds=60))
    try:
        target = {"canary": str(state / "secret.txt"), "port": listener.getsockname()[1]}
        for _ in range(2):  # the same process answers frame after frame
            reply = session.call(json.dumps(target).encode(), timeout=30)
            assert CANARY.encode() not in reply
            found = json.loads(reply)
            assert "canary" not in found and "network" not in found
            assert found["input"] == "public input"
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing ever connected
    finally:
        session.close()
    assert not session.alive


def test_the_session_is_killed_at_the_wall_clock_with_every_process(tmp_path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    session = _session(tmp_path, state, SandboxPolicy(wall_seconds=2.0))
    pid = session._proc.pid  # noqa: SLF001 - the launcher-side process of the sandbox
    assert session.alive
    deadline = time.monotonic() + 15
    while session.alive and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not session.alive
    while running(pid) and time.monotonic() < deadline:  # close() is still reaping
        time.sleep(0.1)
    assert not running(pid)
    with pytest.raises(SessionBroken):
        session.call(b"{}", timeout=1)


# Echoes each frame after a pause given in it: answers come back in the order frames were written.
ECHO = """
import json, os, time
from cleanroom.sandbox.session import read_frame, write_frame
out = os.dup(1)
while (frame := read_frame(0)) is not None:
    time.sleep(json.loads(frame)["pause"])
    write_frame(out, frame)
"""


def _echo(tmp_path: Path) -> SandboxSession:
    request = SandboxRequest(argv=("python3", "-c", ECHO), inputs={})
    return SandboxSession(BubblewrapLauncher(deny=[tmp_path / "state"]), request, SandboxPolicy(wall_seconds=60))


def test_overlapping_calls_each_get_their_own_answer(tmp_path) -> None:
    session = _echo(tmp_path)
    answers: dict[int, dict] = {}
    try:
        def ask(n: int) -> None:
            answers[n] = json.loads(session.call(json.dumps({"n": n, "pause": 0.01 * (n % 3)}).encode(), timeout=30))

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {n: a["n"] for n, a in answers.items()} == {n: n for n in range(24)}
    finally:
        session.close()


def test_a_late_answer_closes_the_session_and_fails_every_call_waiting(tmp_path) -> None:
    session = _echo(tmp_path)
    failures: list[str] = []

    def ask(pause: float, timeout: float) -> None:
        try:
            session.call(json.dumps({"pause": pause}).encode(), timeout=timeout)
        except SessionBroken as error:
            failures.append(str(error))

    try:
        slow = threading.Thread(target=ask, args=(30, 0.5))  # times out: the sandbox is killed
        behind = threading.Thread(target=ask, args=(0, 30))  # queued behind it: must not wait 30 s
        slow.start()
        time.sleep(0.1)
        behind.start()
        started = time.monotonic()
        slow.join()
        behind.join()
        assert time.monotonic() - started < 10 and len(failures) == 2 and not session.alive
        with pytest.raises(SessionBroken):
            session.call(b'{"pause": 0}', timeout=5)
    finally:
        session.close()
