"""Real server processes for restart tests, and which processes are still alive (for tests that
check a sandbox left nothing behind)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "cleanroom.cli", *args]


def serve(state: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`cleanroom serve` on a free port; (the process, its address) once it is serving."""
    port_file = state.parent / "port"
    port_file.unlink(missing_ok=True)
    with log.open("ab") as out:  # a file, not a pipe nobody reads: a chatty server must never block
        process = subprocess.Popen(cli_argv("serve", "--state-dir", str(state), "--listen", "127.0.0.1:0", "--port-file",
                                            str(port_file), "--metrics-listen", ""), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    return process, f"127.0.0.1:{port_file.read_text().strip()}"


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def alive(pids: Iterable[int]) -> list[str]:
    """The command lines of those of `pids` still running."""
    left = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(process.cmdline()))
        except psutil.NoSuchProcess:
            pass
    return left
