"""Cancelling a running sandbox: request.cancel kills the whole tree promptly, on both local backends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil

from cleanroom.sandbox import Outcome, SandboxRequest
from cleanroom.sandbox.base import SandboxPolicy
from cleanroom.sandbox.supervise import Exit, classify
from tests.sandbox.test_sandbox import POLICY, PY, launcher  # noqa: F401 - the fixture, both backends

# A worker that starts a grandchild and both sleep far past the test: only a kill ends them.
SLEEPER = """
import subprocess, time
subprocess.Popen(["sleep", "300"])
open("/out/started", "w").write("yes")
time.sleep(300)
"""


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def alive(pids: set[int]) -> set[int]:
    left = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.add(pid)
        except psutil.NoSuchProcess:
            pass
    return left


def test_cancel_kills_the_running_sandbox_and_every_process_in_it(launcher, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    cancel, seen, before = threading.Event(), set(), descendants()

    def cancel_once_started() -> None:
        deadline = time.monotonic() + 60
        while not (out / "started").exists() and time.monotonic() < deadline:
            seen.update(descendants() - before)
            time.sleep(0.05)
        time.sleep(0.3)
        seen.update(descendants() - before)
        cancel.set()

    canceller = threading.Thread(target=cancel_once_started)
    canceller.start()
    result = launcher.run(SandboxRequest(argv=(PY, "-c", SLEEPER), output_dir=out, cancel=cancel), POLICY)
    canceller.join()
    cancelled_at = time.monotonic()
    assert (out / "started").exists(), result.stderr
    assert result.outcome is Outcome.CANCELLED and not result.ok
    assert result.seconds < 60
    assert len(seen) >= 2  # the backend's own processes and the sleeper were seen running
    while alive(seen) and time.monotonic() - cancelled_at < 5:
        time.sleep(0.05)
    assert not alive(seen), [psutil.Process(p).cmdline() for p in alive(seen)]


def test_an_already_set_cancel_runs_nothing_for_long(launcher, tmp_path: Path) -> None:  # noqa: F811
    cancel = threading.Event()
    cancel.set()
    out = tmp_path / "out"
    out.mkdir()
    started = time.monotonic()
    result = launcher.run(SandboxRequest(argv=(PY, "-c", SLEEPER), output_dir=out, cancel=cancel), POLICY)
    assert result.outcome is Outcome.CANCELLED and time.monotonic() - started < 30


def test_cancellation_takes_precedence_over_the_sigkill_it_caused() -> None:
    killed = Exit(137, b"", b"", b"", 1.0, cancelled=True)
    assert classify(killed, oom=None, output_bytes=0, policy=SandboxPolicy()) is Outcome.CANCELLED
    assert classify(Exit(137, b"", b"", b"", 1.0), oom=None, output_bytes=0, policy=SandboxPolicy()) is Outcome.MEMORY


def test_stale_empty_cgroups_are_swept_and_live_ones_kept() -> None:
    import os

    import pytest

    from cleanroom.sandbox.cgroups import Cgroup, CgroupError, sweep_stale

    try:
        fresh, stale = Cgroup.create({"pids": 8}), Cgroup.create({"pids": 8})
    except CgroupError as exc:
        pytest.fail(f"the sandboxes need a writable cgroup hierarchy, and there is none here: {exc}")
    try:
        old = time.time() - 3600
        for path, _ in stale.dirs.values():
            os.utime(path, (old, old))
        sweep_stale(min_age_seconds=600)
        assert all(not path.exists() for path, _ in stale.dirs.values())
        assert all(path.exists() for path, _ in fresh.dirs.values())  # a run starting now is never touched
    finally:
        fresh.remove()
        stale.remove()
