"""Sandbox pieces that need no sandbox: the seccomp program, the mount guard, outcome rules, choice."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest

from cleanroom.sandbox import backends, seccomp
from cleanroom.sandbox.base import Outcome, SandboxPolicy, SandboxRequest
from cleanroom.sandbox.bwrap import BubblewrapLauncher
from cleanroom.sandbox.layout import LayoutError, MountGuard, interpreter_dirs, library_path, sandbox_env, tree_bytes
from cleanroom.sandbox.runsc import RunscLauncher
from cleanroom.sandbox.supervise import Exit, classify


def run_filter(nr: int, arch: int = seccomp.AUDIT_ARCH_X86_64, arg0: int = 0) -> int:
    """A small classic-BPF interpreter for exactly the instructions the filter uses."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    raw = seccomp.filter_bytes()
    prog = [struct.unpack_from("<HBBI", raw, i) for i in range(0, len(raw), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == seccomp.BPF_RET_K:
            return k
        if code == seccomp.BPF_LD_W_ABS:
            acc, pc = struct.unpack_from("<I", data, k)[0], pc + 1
            continue
        taken = {seccomp.BPF_JEQ_K: acc == k, seccomp.BPF_JGE_K: acc >= k, seccomp.BPF_JSET_K: bool(acc & k)}[code]
        pc += 1 + (jt if taken else jf)


EPERM = seccomp.SECCOMP_RET_ERRNO | errno.EPERM


def test_seccomp_denies_the_list_and_allows_the_rest():
    for name, nr in seccomp.DENIED_SYSCALLS.items():
        assert run_filter(nr) == EPERM, name
    for nr in (0, 1, 2, 9, 57, 59, 60, 231):  # read, write, open, mmap, fork, execve, exit, exit_group
        assert run_filter(nr) == seccomp.SECCOMP_RET_ALLOW


def test_seccomp_arch_x32_and_clone_rules():
    assert run_filter(0, arch=0x40000003) == seccomp.SECCOMP_RET_KILL_PROCESS  # i386
    assert run_filter(0 | seccomp.X32_SYSCALL_BIT) == seccomp.SECCOMP_RET_KILL_PROCESS
    assert run_filter(seccomp.SYS_CLONE, arg0=0x01200011) == seccomp.SECCOMP_RET_ALLOW  # glibc fork()
    assert run_filter(seccomp.SYS_CLONE, arg0=0x003D0F00) == seccomp.SECCOMP_RET_ALLOW  # pthread_create
    assert run_filter(seccomp.SYS_CLONE, arg0=0x10000000 | 17) == EPERM  # CLONE_NEWUSER
    assert run_filter(seccomp.SYS_CLONE3) == seccomp.SECCOMP_RET_ERRNO | errno.ENOSYS
    assert len(seccomp.filter_bytes()) % 8 == 0


def test_mount_guard(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    guard = MountGuard((state,))
    for bad in (state, state / "keys", tmp_path, Path("/"), Path("/root")):
        with pytest.raises(LayoutError):
            guard.check(bad)
    guard.check(tmp_path.parent / "elsewhere")
    for path in interpreter_dirs():
        guard.check(path)  # the pyenv prefix under /root is fine; /root itself is not


def test_environment_rules():
    env = sandbox_env(SandboxRequest(argv=("true",), env={"A": "1", "HOME": "/out"}))
    moved_libpython = {"LD_LIBRARY_PATH"} if library_path() else set()  # layout.py: a shared interpreter moved to /opt
    assert env["A"] == "1" and env["HOME"] == "/out" and set(env) == {"A", "HOME", "PATH"} | moved_libpython
    for bad in ({"": "x"}, {"A=B": "x"}, {"A": "x\0y"}):
        with pytest.raises(LayoutError):
            sandbox_env(SandboxRequest(argv=("true",), env=bad))


def _exit(code, *, tail=b"", **kw) -> Exit:
    return Exit(code, b"", tail, tail, 0.1, **kw)


@pytest.mark.parametrize(("exit", "oom", "expected"), [
    (_exit(137), True, Outcome.MEMORY),
    (_exit(137), None, Outcome.MEMORY),           # no cgroup evidence: an unexplained SIGKILL
    (_exit(137), False, Outcome.EXITED),          # the cgroup says no OOM: the code killed itself
    (_exit(1, tail=b"Traceback...\nMemoryError\n"), False, Outcome.MEMORY),
    (_exit(1, tail=b"ValueError: MemoryError\n"), False, Outcome.EXITED),
    (_exit(137, timed_out=True), True, Outcome.WALL_TIME),
    (_exit(None, launch_error="boom"), None, Outcome.LAUNCH_FAILED),
    (_exit(0, output_exceeded=True), False, Outcome.OUTPUT_TOO_LARGE),
    (_exit(0), False, Outcome.EXITED),
])
def test_outcome_rules(exit, oom, expected):
    assert classify(exit, oom=oom, output_bytes=0, policy=SandboxPolicy()) is expected


def test_output_size_does_not_follow_links(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 1000)
    (tmp_path / "link").symlink_to("/usr")
    assert 1000 <= tree_bytes(tmp_path, 1 << 30) < 1200


def _fake(monkeypatch, runsc: tuple[bool, str], bwrap: tuple[bool, str]) -> None:
    monkeypatch.setattr(RunscLauncher, "available", lambda self: runsc)
    monkeypatch.setattr(BubblewrapLauncher, "available", lambda self: bwrap)


def test_choose_prefers_runsc(monkeypatch):
    _fake(monkeypatch, (True, "gVisor runsc with --platform=ptrace"), (True, "ok"))
    launcher, reason = backends.choose_launcher()
    assert launcher.name == "runsc" and reason == "gVisor runsc with --platform=ptrace" == launcher.reason


def test_choose_falls_back_to_bwrap(monkeypatch):
    _fake(monkeypatch, (False, "runsc is not installed"), (True, "ok"))
    launcher, reason = backends.choose_launcher("auto")
    assert launcher.name == "bwrap" and reason == "bubblewrap fallback: runsc unavailable: runsc is not installed"


def test_choose_forced_and_failing(monkeypatch):
    _fake(monkeypatch, (False, "no"), (False, "nope"))
    with pytest.raises(backends.SandboxUnavailable):
        backends.choose_launcher("runsc")
    with pytest.raises(backends.SandboxUnavailable):
        backends.choose_launcher("bwrap")
    with pytest.raises(backends.SandboxUnavailable):
        backends.choose_launcher("auto")
    with pytest.raises(ValueError):
        backends.choose_launcher("docker")
    _fake(monkeypatch, (True, "fine"), (True, "ok"))
    assert backends.choose_launcher("bwrap")[0].name == "bwrap"
