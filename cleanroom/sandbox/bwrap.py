"""Bubblewrap backend: every namespace unshared, read-only mounts, seccomp, rlimits, a pids cgroup.

The sandboxed process runs as uid 65534 in its own user namespace, with no capabilities, no
network, a fresh /dev, a size-limited /tmp, a read-only root, and bwrap started with an empty
environment (its PID 1 would otherwise keep the launcher's). No procfs: its mountinfo names the
host directory behind every bind mount (the kernel shows a bind's root within its file system),
which would undo layout.py's neutral paths; /proc is a read-only directory holding only a copy of
cpuinfo, which torch reads to pick its vector kernels. Limits: RLIMIT_AS (memory per
process), RLIMIT_FSIZE, RLIMIT_CPU, RLIMIT_CORE=0, RLIMIT_NPROC, and a per-run cgroup for tasks
and memory. As host root the cgroup is mandatory: the user namespace maps the sandbox uid to host
root, for whom the kernel never enforces RLIMIT_NPROC (see cgroups.py); without one we refuse to
start rather than run without a process limit.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from cleanroom.sandbox import layout, seccomp
from cleanroom.sandbox.base import SandboxPolicy, SandboxRequest, SandboxResult, SetupError
from cleanroom.sandbox.cgroups import Cgroup, CgroupError
from cleanroom.sandbox.probed import ProbedLauncher
from cleanroom.sandbox.supervise import Command, Launch, finish, launch_failed, supervise

SANDBOX_UID = 65534
# bwrap's own two processes (outer monitor, PID 1 inside) count against the task budget.
BWRAP_TASKS = 2


class BubblewrapLauncher(ProbedLauncher):
    name = "bwrap"
    binary_name = "bwrap"
    probe_wall_seconds = 30.0
    works = "bubblewrap works"

    def __init__(self, *, deny: Sequence[Path] = (), binary: str | None = None, reason: str = "bubblewrap requested") -> None:
        super().__init__(deny=deny, binary=binary, reason=reason)

    def run(self, request: SandboxRequest, policy: SandboxPolicy) -> SandboxResult:
        if not self.binary:
            return launch_failed(self.name, self.reason, "bwrap is not installed")
        with tempfile.TemporaryDirectory(prefix="cleanroom-bwrap-") as scratch:
            try:
                args, output, cgroup = self.prepare(request, policy, Path(scratch))
            except (layout.LayoutError, CgroupError) as exc:
                return launch_failed(self.name, self.reason, str(exc))
            try:
                return self._supervise(args, request, policy, output, cgroup)
            finally:
                if cgroup is not None:
                    cgroup.remove()

    def prepare(self, request: SandboxRequest, policy: SandboxPolicy,
                scratch: Path) -> tuple[tuple[list[str], list[str]], Path, Cgroup | None]:
        """bwrap's arguments, the output directory and the run's cgroup (shared by one-shot runs and
        long-lived sessions); raises LayoutError or CgroupError when the sandbox cannot be set up."""
        output = request.output_dir or layout.scratch_output(scratch)
        return self._bwrap_args(request, policy, output, scratch), output, _cgroup(policy)

    def prepare_session(self, request: SandboxRequest, policy: SandboxPolicy, scratch: Path) -> Launch:
        """The same sandbox as a one-shot run's, for a long-lived session (session.SessionHost)."""
        if not self.binary:
            raise SetupError("bwrap is not installed")
        try:
            args, _, cgroup = self.prepare(request, policy, scratch)
        except (layout.LayoutError, CgroupError) as exc:
            raise SetupError(str(exc)) from None
        cmd, filter_r = self.command(args, policy, cgroup)
        return Launch(cmd, close_after_start=(filter_r,), teardown=cgroup.remove if cgroup is not None else (lambda: None))

    def command(self, args: tuple[list[str], list[str]], policy: SandboxPolicy, cgroup: Cgroup | None, *,
                stdin: bytes = b"", cancel: threading.Event | None = None) -> tuple[Command, int]:
        """The Command that starts bwrap, and the read end of the pipe holding its seccomp filter,
        which the caller closes once the process has started."""
        if not self.binary:
            raise SetupError("bwrap is not installed")
        filter_r, filter_w = os.pipe()
        os.write(filter_w, seccomp.filter_bytes())
        os.close(filter_w)
        cmd = Command(
            argv=[self.binary, *args[0], "--seccomp", str(filter_r), "--", *args[1]],
            stdin=stdin, pass_fds=(filter_r,), rlimits=layout.rlimits(policy),
            cgroup_procs=cgroup.procs_files() if cgroup else [],
            kill=cgroup.kill_all if cgroup else (lambda: None), cancel=cancel,
        )
        return cmd, filter_r

    def _supervise(self, args: tuple[list[str], list[str]], request: SandboxRequest, policy: SandboxPolicy,
                   output: Path, cgroup: Cgroup | None) -> SandboxResult:
        cmd, filter_r = self.command(args, policy, cgroup, stdin=request.stdin, cancel=request.cancel)
        try:
            exit = supervise(cmd, policy, output)
        finally:
            os.close(filter_r)
        if exit.launch_error is None and exit.returncode == 1 and exit.stderr.startswith(b"bwrap: "):
            exit.launch_error = "bubblewrap could not set up the sandbox"
        oom = cgroup.oom_killed() if cgroup and "memory" in cgroup.dirs else None
        return finish(exit, oom=oom, output=output, policy=policy, backend=self.name, reason=self.reason)

    def _bwrap_args(self, request: SandboxRequest, policy: SandboxPolicy, output: Path,
                    scratch: Path) -> tuple[list[str], list[str]]:
        """(bwrap options, command); the command drops the PWD that bwrap itself sets."""
        layout.check_output_dir(output, self.guard)
        etc = layout.write_etc(scratch / "etc")
        opts = [
            "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--clearenv", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox",
            "--cap-drop", "ALL",
        ]
        # /tmp first: the code or the virtualenv may live under /tmp (a CI checkout), and a later
        # tmpfs would hide their binds.
        opts += ["--size", str(policy.tmpfs_bytes), "--tmpfs", "/tmp"]
        opts += _mount_args(request, self.guard, scratch / "layout")
        opts += ["--ro-bind", str(etc), "/etc", "--ro-bind", str(static_proc(scratch / "proc")), "/proc", "--dev", "/dev"]
        opts += ["--size", str(policy.tmpfs_bytes), "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
        opts += ["--bind", str(output), "/out", "--remount-ro", "/", "--chdir", request.workdir]
        for key, value in layout.sandbox_env(request).items():
            opts += ["--setenv", key, value]
        return opts, ["/usr/bin/env", "-u", "PWD", "--", *request.argv]


def static_proc(directory: Path) -> Path:
    """/proc without procfs: cpuinfo only (CPU features, no path)."""
    directory.mkdir()
    try:
        (directory / "cpuinfo").write_bytes(Path("/proc/cpuinfo").read_bytes())
    except OSError:
        pass  # torch then falls back to its generic kernels
    return directory


def _mount_args(request: SandboxRequest, guard: layout.MountGuard, staging: Path) -> list[str]:
    mounts, links = layout.system_entries()
    args = []
    for link in links:
        args += ["--symlink", link.target, link.dest]
    staging.mkdir()
    for mount in mounts + layout.readonly_mounts(request, guard, staging):
        args += ["--ro-bind", str(mount.source), mount.dest]
    return args


def _cgroup(policy: SandboxPolicy) -> Cgroup | None:
    """Tasks and memory (tmpfs pages count too); mandatory for root, best effort otherwise."""
    limits = {"pids": policy.max_processes + BWRAP_TASKS, "memory": policy.memory_bytes + 2 * policy.tmpfs_bytes}
    try:
        return Cgroup.create(limits)
    except CgroupError as exc:
        if os.geteuid() == 0:
            raise CgroupError(f"no pids cgroup, and as root RLIMIT_NPROC is not enforced: {exc}") from exc
        return None
