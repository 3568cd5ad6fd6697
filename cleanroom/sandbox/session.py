"""A long-lived sandbox spoken to over its stdin and stdout, one frame at a time.

The statistics worker keeps a decrypted dataset in memory across queries, so unlike a job it is
not one command run to its end: the host writes a length-prefixed request, the sandbox answers
with one length-prefixed frame. Any backend that implements `SessionHost` can host one (bubblewrap
and gVisor do; the registry, backends.py, says which and why not); the sandbox is the same as a
job's on that backend (same mounts, seccomp filter or gVisor kernel, rlimits and cgroup, no
network, no state directory). Its stderr is drained and dropped, and it is killed at the policy's
wall clock whatever it is doing, which bounds how long decrypted data can live in it.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Protocol

from cleanroom.sandbox.base import SandboxPolicy, SandboxRequest, SetupError, error_type
from cleanroom.sandbox.supervise import Capture, Launch, pipes, start_command

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 64 << 20


class SessionBroken(Exception):
    """The sandboxed process died, timed out or spoke out of turn; the session is closed."""


def write_frame(fd: int, payload: bytes) -> None:
    data = HEADER.pack(len(payload)) + payload
    while data:
        data = data[os.write(fd, data):]


def read_frame(fd: int) -> bytes | None:
    """One frame, or None at a clean end of stream before any header byte. Blocks: a caller that
    needs a time limit waits for its answer elsewhere (SandboxSession.call)."""
    header = _read_exactly(fd, HEADER.size, allow_eof=True)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise SessionBroken("frame too large")
    return _read_exactly(fd, size, allow_eof=False) or b""


def _read_exactly(fd: int, size: int, *, allow_eof: bool) -> bytes | None:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            if allow_eof and left == size:
                return None
            raise SessionBroken("the sandbox closed its output")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class SessionHost(Protocol):
    """A backend that can keep one sandboxed process running for a session."""

    @property
    def name(self) -> str: ...

    def available(self) -> tuple[bool, str]:
        """Whether this backend works on this host, and why not when it does not."""
        ...

    def prepare_session(self, request: SandboxRequest, policy: SandboxPolicy, scratch: Path) -> Launch:
        """Set up the sandbox for `request` (scratch space under `scratch`, removed by the session
        after the teardown) and return what starts it; raises SetupError when it cannot be set up."""
        ...


class _Reply:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.frame: bytes | None = None  # None once done: the sandbox ended first


class SandboxSession:
    """One sandboxed process; `call` sends a request frame and waits for its answer frame.

    Calls may overlap: frames are written in turn and the process answers them in order, so the
    next request already waits in its input while it computes the current one, and a reader thread
    hands each answer to its caller (first written, first answered)."""

    def __init__(self, host: SessionHost, request: SandboxRequest, policy: SandboxPolicy) -> None:
        self.backend = host.name
        self._scratch = Path(tempfile.mkdtemp(prefix="cleanroom-session-"))
        self._lock = threading.Lock()   # writes, and the order of the callers waiting
        self._waiting: collections.deque[_Reply] = collections.deque()
        self._closing = threading.Lock()
        self._closed = False
        self.started = time.monotonic()
        try:
            self._launch = host.prepare_session(request, policy, self._scratch)  # the same sandbox as a job's
        except (SetupError, OSError) as exc:
            shutil.rmtree(self._scratch, ignore_errors=True)
            raise SessionBroken(f"cannot set up the sandbox: {exc}") from None
        self._proc = self._start(self._launch)
        self._stdin, self._stdout, stderr = pipes(self._proc)
        self._stderr = Capture(stderr.fileno(), 0)  # drained so it never blocks; only its tail is kept
        self._stderr.start()
        self._reader = threading.Thread(target=self._read_answers, name="sandbox-answers", daemon=True)
        self._reader.start()
        self._timer = threading.Timer(policy.wall_seconds, self.close)
        self._timer.daemon = True
        self._timer.start()

    def _start(self, launch: Launch) -> subprocess.Popen[bytes]:
        err_r, err_w = os.pipe()
        try:
            return start_command(launch.command, err_w)
        except OSError as exc:
            self._cleanup()
            raise SessionBroken(f"cannot start the sandbox: {exc}") from None
        finally:
            for fd in (*launch.close_after_start, err_w, err_r):
                os.close(fd)

    def error_type(self) -> str:
        """The class name of the exception the sandbox died with, if any (never its message)."""
        return error_type(bytes(self._stderr.tail))

    @property
    def alive(self) -> bool:
        """Asked several times a query, so it costs no system call: a process that ends closes its
        output, and the reader thread closes the session at once."""
        return not self._closed

    def call(self, payload: bytes, *, timeout: float) -> bytes:
        """Send one request, return its answer; a failure or a late answer closes the session
        (and so fails every call waiting on it) and raises."""
        reply = _Reply()
        with self._lock:
            if not self.alive:
                raise SessionBroken("the sandbox has ended")
            self._waiting.append(reply)  # before the write: answers come back in write order
            try:
                write_frame(self._stdin.fileno(), payload)
            except OSError:
                self._waiting.remove(reply)
                broken = True
            else:
                broken = False
        if broken:
            self.close()
            raise SessionBroken("the sandbox stopped reading")
        if not reply.done.wait(timeout):
            self.close()
            raise SessionBroken("no answer in time")
        if reply.frame is None:
            raise SessionBroken("the sandbox has ended")
        return reply.frame

    def _read_answers(self) -> None:
        """Hands each answer frame to the caller waiting longest; at the end, fails the rest."""
        try:
            while (frame := read_frame(self._stdout.fileno())) is not None:
                with self._lock:
                    reply = self._waiting.popleft() if self._waiting else None
                if reply is None:
                    break  # an answer nobody asked for: the worker is out of turn
                reply.frame = frame
                reply.done.set()
        except (OSError, ValueError, SessionBroken):
            pass  # the pipe closed under us, or a malformed frame: the session is over either way
        with self._lock:
            left, self._waiting = list(self._waiting), collections.deque()
        for reply in left:
            reply.done.set()  # frame None: ended
        threading.Thread(target=self.close, daemon=True).start()  # never join ourselves

    def close(self) -> None:
        """Kill the whole sandbox (its cgroup and process group) and remove its scratch space."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
        self._timer.cancel()
        self._launch.command.kill()  # the backend's own way: its cgroup, its container
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._proc.wait()
        for pipe in pipes(self._proc):
            try:
                pipe.close()
            except OSError:
                pass
        self._cleanup()

    def _cleanup(self) -> None:
        self._launch.teardown()
        shutil.rmtree(self._scratch, ignore_errors=True)
