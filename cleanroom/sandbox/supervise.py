"""Run one sandbox command from the launcher side: start, feed, capture, time out, classify.

No Python runs between fork and exec in the launcher (the service has gRPC threads, and
`preexec_fn` can deadlock a threaded parent): rlimits and cgroup membership are applied by a tiny
trampoline interpreter that then execs the backend with an empty environment. An exec failure
comes back on a close-on-exec pipe, so it is told apart from anything the sandbox prints.

Outcome rule for memory (documented in the report, used by every backend):
  * the run's memory cgroup counted an OOM kill                        -> MEMORY
  * no cgroup evidence available and the sandbox died by SIGKILL (137)  -> MEMORY
    (we did not send it: our own kills are WALL_TIME / OUTPUT_TOO_LARGE)
  * Python exited 1 with a last stderr line starting "MemoryError"     -> MEMORY (RLIMIT_AS)

A one-shot run goes through `supervise`. A long-lived session (session.py) starts the same kind of
Command itself and keeps it running; it uses the public pieces: `Command` and `Launch` (what a
backend hands over), `start_command` (the trampoline start), `pipes` and `Capture` (drain a pipe).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cleanroom.sandbox.base import Outcome, SandboxPolicy, SandboxResult
from cleanroom.sandbox.layout import scrub_output, tree_bytes

OUTPUT_POLL_SECONDS = 1.0
TAIL_BYTES = 2048
SIGKILL_EXIT = 128 + signal.SIGKILL
_TRAMPOLINE = """\
import json, os, resource, sys
spec = json.loads(sys.argv[1])
try:
    for path in spec["cgroups"]:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
    for name, soft, hard in spec["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    os.set_inheritable(spec["errfd"], False)
    os.execve(spec["argv"][0], spec["argv"], {})
except BaseException as exc:
    os.write(spec["errfd"], ("trampoline: %r" % (exc,)).encode()[:4000])
    os._exit(125)
"""


@dataclass
class Command:
    """What a backend asks the supervisor to run; `kill` stops the sandbox the backend's way."""

    argv: list[str]
    stdin: bytes = b""
    pass_fds: Sequence[int] = ()
    rlimits: list[tuple[str, int, int]] = field(default_factory=list)
    cgroup_procs: list[str] = field(default_factory=list)
    kill: Callable[[], None] = lambda: None
    cancel: threading.Event | None = None  # set by the caller: kill the sandbox now


def _nothing() -> None:
    pass


@dataclass
class Launch:
    """A sandbox set up and ready to start, for a caller that keeps it running (a session):
    the command, the descriptors to close once it has started (bubblewrap's seccomp filter pipe),
    and the teardown to run once it has been killed (remove its cgroup, delete its container)."""

    command: Command
    close_after_start: tuple[int, ...] = ()
    teardown: Callable[[], None] = _nothing


@dataclass
class Exit:
    returncode: int | None          # 128+N for death by signal N
    stdout: bytes
    stderr: bytes
    stderr_tail: bytes
    seconds: float
    timed_out: bool = False
    output_exceeded: bool = False
    launch_error: str | None = None
    cancelled: bool = False


class Capture(threading.Thread):
    """Drains a pipe to the end (so the writer never blocks), keeping its first `limit` bytes in
    `head` and its last TAIL_BYTES in `tail`. Used for a sandbox's stdout and stderr, here and by
    long-lived sessions (session.py), which keep only the tail."""

    def __init__(self, fd: int, limit: int) -> None:
        super().__init__(daemon=True)
        self.fd, self.limit, self.head, self.tail = fd, limit, bytearray(), b""

    def run(self) -> None:
        try:
            while chunk := os.read(self.fd, 65536):
                if len(self.head) < self.limit:
                    self.head += chunk[: self.limit - len(self.head)]
                self.tail = (self.tail + chunk)[-TAIL_BYTES:]
        except OSError:
            pass  # closed under us after a straggler outlived the join timeout


def _feed(pipe: IO[bytes], data: bytes) -> None:
    try:
        pipe.write(data)
    except (BrokenPipeError, OSError):
        pass  # the sandbox need not read its stdin
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def start_command(cmd: Command, errfd: int) -> subprocess.Popen[bytes]:
    """Start cmd through the trampoline, in a new session (its own process group), with pipes for
    stdin, stdout and stderr and an empty environment. `errfd` is the write end of a pipe on which
    the trampoline reports a failure to exec; the caller closes it once this returns (and reads the
    other end after the process has ended). Raises OSError when the trampoline cannot start."""
    spec = {"argv": cmd.argv, "rlimits": cmd.rlimits, "cgroups": cmd.cgroup_procs, "errfd": errfd}
    argv = [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, json.dumps(spec)]
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={},
        start_new_session=True, pass_fds=(*cmd.pass_fds, errfd), close_fds=True,
    )


def _terminate(proc: subprocess.Popen[bytes], cmd: Command) -> None:
    cmd.kill()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _watch(proc: subprocess.Popen[bytes], cmd: Command, policy: SandboxPolicy, output_dir: Path) -> tuple[bool, bool, bool]:
    """Wait for the end; kill at the wall clock, once /out outgrows its limit (polled), or when the
    caller sets cmd.cancel. Returns (timed out, output exceeded, cancelled)."""
    start = time.monotonic()
    next_poll = start + OUTPUT_POLL_SECONDS
    while True:
        if cmd.cancel is not None and cmd.cancel.is_set():
            _terminate(proc, cmd)
            return False, False, True
        try:
            proc.wait(timeout=0.05)
            return False, False, False
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        late = now - start >= policy.wall_seconds
        big = now >= next_poll and tree_bytes(output_dir, policy.max_output_bytes) > policy.max_output_bytes
        if late or big:
            _terminate(proc, cmd)
            return late, big and not late, False
        if now >= next_poll:
            next_poll = now + OUTPUT_POLL_SECONDS


def supervise(cmd: Command, policy: SandboxPolicy, output_dir: Path) -> Exit:
    """Run cmd to its end under the wall clock; logs cut to policy.max_log_bytes each."""
    start = time.monotonic()
    err_r, err_w = os.pipe()
    try:
        proc = start_command(cmd, err_w)
    except OSError as exc:
        os.close(err_r)
        return Exit(None, b"", b"", b"", 0.0, launch_error=f"cannot start: {exc}")
    finally:
        os.close(err_w)
    stdin, stdout, stderr = pipes(proc)
    readers = [Capture(p.fileno(), policy.max_log_bytes) for p in (stdout, stderr)]
    feeder = threading.Thread(target=_feed, args=(stdin, cmd.stdin), daemon=True)
    for thread in (*readers, feeder):
        thread.start()
    try:
        timed_out, exceeded, cancelled = _watch(proc, cmd, policy, output_dir)
    finally:
        if proc.returncode is None:
            _terminate(proc, cmd)
    for thread in readers:
        thread.join(timeout=5)
    for pipe in (stdout, stderr):
        pipe.close()
    with os.fdopen(err_r, "rb") as errors:
        launch_error = errors.read().decode(errors="replace") or None
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    out, err = (bytes(r.head) for r in readers)
    return Exit(code, out, err, readers[1].tail, time.monotonic() - start, timed_out, exceeded, launch_error, cancelled)


def pipes(proc: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes], IO[bytes]]:
    """The stdin, stdout and stderr pipes of a process started by start_command (always all three)."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    return proc.stdin, proc.stdout, proc.stderr


def _memory_killed(exit: Exit, oom: bool | None) -> bool:
    if oom:
        return True
    if oom is None and exit.returncode == SIGKILL_EXIT:
        return True
    lines = exit.stderr_tail.strip().splitlines()
    return exit.returncode == 1 and bool(lines) and lines[-1].startswith(b"MemoryError")


def classify(exit: Exit, *, oom: bool | None, output_bytes: int, policy: SandboxPolicy) -> Outcome:
    """Precedence: launch failure, cancellation, wall clock, memory, output size, then a plain exit."""
    if exit.launch_error is not None:
        return Outcome.LAUNCH_FAILED
    if exit.cancelled:
        return Outcome.CANCELLED
    if exit.timed_out:
        return Outcome.WALL_TIME
    if _memory_killed(exit, oom):
        return Outcome.MEMORY
    if exit.output_exceeded or output_bytes > policy.max_output_bytes:
        return Outcome.OUTPUT_TOO_LARGE
    return Outcome.EXITED


def finish(exit: Exit, *, oom: bool | None, output: Path, policy: SandboxPolicy, backend: str, reason: str) -> SandboxResult:
    """Scrub /out, measure it, classify, and build the result."""
    removed = scrub_output(output)
    outcome = classify(exit, oom=oom, output_bytes=tree_bytes(output, policy.max_output_bytes), policy=policy)
    stderr = exit.stderr
    if exit.launch_error:
        stderr += f"\n{backend}: {exit.launch_error}".encode()
    if removed:
        stderr += f"\n{backend}: removed {removed} links or special files from the output".encode()
    return SandboxResult(outcome, exit.returncode, exit.stdout, stderr, backend, reason, exit.seconds)


def launch_failed(backend: str, reason: str, message: str, seconds: float = 0.0) -> SandboxResult:
    return SandboxResult(Outcome.LAUNCH_FAILED, None, b"", message.encode()[:4096], backend, reason, seconds)
