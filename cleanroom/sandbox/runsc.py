"""gVisor backend: `runsc --network=none --platform=ptrace run` on an OCI bundle generated per run.

The bundle's rootfs is an empty read-only directory holding only mount points, a minimal /etc and
the merged-/usr symlinks; everything else is a read-only bind (system /usr, and at layout.py's
neutral paths the interpreter, venv and service code; /in/<name>), plus a writable /out and a size-limited tmpfs /tmp. The process runs as
root of gVisor's user namespace with no capabilities and no new privileges; gVisor's own kernel
enforces the rlimits (RLIMIT_NPROC included, verified with a fork bomb). Memory is bounded twice:
RLIMIT_AS inside, and a per-run memory cgroup around the whole sandbox (sentry and gofer included,
hence the overhead allowance) whose OOM counter tells a memory kill apart from any other SIGKILL.
Each run has its own container id and its own `--root`, so concurrent runs never collide.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cleanroom.sandbox import layout
from cleanroom.sandbox.base import SandboxPolicy, SandboxRequest, SandboxResult, SetupError
from cleanroom.sandbox.cgroups import Cgroup, CgroupError
from cleanroom.sandbox.probed import ProbedLauncher
from cleanroom.sandbox.supervise import Command, Exit, Launch, finish, launch_failed, supervise

PLATFORM = "ptrace"  # the only platform that works on these machines (no KVM for the sentry)
SENTRY_OVERHEAD_BYTES = 384 << 20
CONTROL_TIMEOUT = 15


class RunscLauncher(ProbedLauncher):
    name = "runsc"
    binary_name = "runsc"
    probe_wall_seconds = 60.0
    works = f"gVisor runsc with --platform={PLATFORM}"

    def __init__(self, *, deny: Sequence[Path] = (), binary: str | None = None, reason: str = "gVisor runsc requested") -> None:
        super().__init__(deny=deny, binary=binary, reason=reason)

    def run(self, request: SandboxRequest, policy: SandboxPolicy) -> SandboxResult:
        if not self.binary:
            return launch_failed(self.name, self.reason, "runsc is not installed")
        with tempfile.TemporaryDirectory(prefix="cleanroom-runsc-") as scratch:
            try:
                run, output, cgroup = self._stage(self.binary, request, policy, Path(scratch))
            except SetupError as exc:
                return launch_failed(self.name, self.reason, str(exc))
            try:
                exit = supervise(run.command(request, cgroup), policy, output)
                run.delete()
                return self._result(exit, run, cgroup, policy, output)
            finally:
                if cgroup is not None:
                    cgroup.remove()

    def prepare_session(self, request: SandboxRequest, policy: SandboxPolicy, scratch: Path) -> Launch:
        """The same container as a one-shot run's, for a long-lived session (session.SessionHost):
        its stdin and stdout stay open for frames; the teardown deletes what is left of the
        container and removes its cgroup."""
        if not self.binary:
            raise SetupError("runsc is not installed")
        run, _, cgroup = self._stage(self.binary, request, policy, scratch)

        def teardown() -> None:
            run.delete()
            if cgroup is not None:
                cgroup.remove()

        return Launch(run.command(request, cgroup), teardown=teardown)

    def _stage(self, binary: str, request: SandboxRequest, policy: SandboxPolicy,
               scratch: Path) -> tuple[_Run, Path, Cgroup | None]:
        """The container's id and state root, its output directory, its cgroup, and its bundle
        written; raises SetupError for a refused mount (OSError writing the bundle propagates)."""
        run = _Run(binary, scratch, f"cleanroom-{uuid.uuid4().hex}")
        output = request.output_dir or layout.scratch_output(scratch)
        try:
            layout.check_output_dir(output, self.guard)
            mounts = layout.readonly_mounts(request, self.guard, _staging(scratch))
        except layout.LayoutError as exc:
            raise SetupError(str(exc)) from None
        cgroup = _cgroup(policy)
        try:
            write_bundle(run.bundle, request, policy, mounts, output, cgroup is None)
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise
        return run, output, cgroup

    def _result(self, exit: Exit, run: _Run, cgroup: Cgroup | None, policy: SandboxPolicy, output: Path) -> SandboxResult:
        # runsc exits 128 and logs a fatal error when it could not create or start the container.
        if exit.launch_error is None and not exit.timed_out and exit.returncode == 128 and run.logged_error():
            exit.launch_error = "runsc could not start the container"
        oom = cgroup.oom_killed() if cgroup is not None else None
        return finish(exit, oom=oom, output=output, policy=policy, backend=self.name, reason=self.reason)


class _Run:
    """One container: its id, its private state root, its bundle, and how to stop it."""

    def __init__(self, binary: str, scratch: Path, container_id: str) -> None:
        self.binary, self.id = binary, container_id
        self.bundle, self.state, self.log = scratch / "bundle", scratch / "state", scratch / "runsc.log"
        self.state.mkdir(mode=0o700)

    def _global(self) -> list[str]:
        return [self.binary, "--root", str(self.state), "--network=none", f"--platform={PLATFORM}", "--log", str(self.log)]

    def command(self, request: SandboxRequest, cgroup: Cgroup | None) -> Command:
        flags = ["--ignore-cgroups"] if cgroup is not None else []
        return Command(
            argv=[*self._global(), *flags, "run", "--bundle", str(self.bundle), self.id],
            stdin=request.stdin, cgroup_procs=cgroup.procs_files() if cgroup else [],
            kill=lambda: self._kill(cgroup), cancel=request.cancel,
        )

    def _control(self, *args: str) -> None:
        """A runsc control command; failures are fine, the cgroup and process-group kills follow."""
        try:
            subprocess.run([*self._global(), *args], env={}, capture_output=True, timeout=CONTROL_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def _kill(self, cgroup: Cgroup | None) -> None:
        self._control("kill", "--all", self.id, "KILL")
        self.delete()
        if cgroup is not None:
            cgroup.kill_all()

    def delete(self) -> None:
        """Remove what is left of the container; a run that ended normally left nothing."""
        if self.state.exists() and any(self.state.iterdir()):
            self._control("delete", "--force", self.id)

    def logged_error(self) -> bool:
        return self.log.exists() and self.log.stat().st_size > 0


def _staging(scratch: Path) -> Path:
    """Where layout.py generates the venv's skeleton and overlays for this run."""
    staging = scratch / "layout"
    staging.mkdir()
    return staging


def _cgroup(policy: SandboxPolicy) -> Cgroup | None:
    """Memory for the whole sandbox; without it runsc's own cgroup gets the limit (see spec)."""
    try:
        return Cgroup.create({"memory": policy.memory_bytes + policy.tmpfs_bytes + SENTRY_OVERHEAD_BYTES})
    except CgroupError:
        return None


def write_bundle(bundle: Path, request: SandboxRequest, policy: SandboxPolicy, mounts: list[layout.Mount],
                 output: Path, runsc_cgroup: bool) -> None:
    rootfs = bundle / "rootfs"
    sys_mounts, links = layout.system_entries()
    all_ro = sys_mounts + mounts
    _make_rootfs(rootfs, all_ro, links)
    spec = _spec(request, policy, all_ro, output)
    if runsc_cgroup:
        spec["linux"]["resources"] = {"memory": {"limit": policy.memory_bytes + policy.tmpfs_bytes}}
    (bundle / "config.json").write_text(json.dumps(spec, indent=1))


def _make_rootfs(rootfs: Path, mounts: list[layout.Mount], links: list[layout.Symlink]) -> None:
    """Mount points only (a file input needs a file to land on), a minimal /etc, the /usr links."""
    for name in ("proc", "dev", "tmp", "out", "in"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    layout.write_etc(rootfs / "etc")
    for link in links:
        os.symlink(link.target, rootfs / link.dest.lstrip("/"))
    for mount in mounts:
        point = rootfs / mount.dest.lstrip("/")
        if mount.source.is_dir():
            point.mkdir(parents=True, exist_ok=True)
        else:
            point.parent.mkdir(parents=True, exist_ok=True)
            point.touch()
    os.chmod(rootfs, 0o755)


def _spec(request: SandboxRequest, policy: SandboxPolicy, mounts: list[layout.Mount], output: Path) -> dict[str, Any]:
    env = [f"{k}={v}" for k, v in layout.sandbox_env(request).items()]
    no_caps: dict[str, list[str]] = {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
    rlimits = [{"type": n, "soft": s, "hard": h} for n, s, h in layout.rlimits(policy)]
    process = {"user": {"uid": 0, "gid": 0}, "args": list(request.argv), "env": env, "cwd": request.workdir,
               "capabilities": no_caps, "rlimits": rlimits, "noNewPrivileges": True, "terminal": False}
    binds = [{"destination": m.dest, "type": "bind", "source": str(m.source), "options": ["rbind", "ro", "nosuid", "nodev"]}
             for m in mounts]
    return {
        "ociVersion": "1.0.2", "process": process, "hostname": "sandbox",
        "root": {"path": "rootfs", "readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            *({"destination": d, "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777", f"size={policy.tmpfs_bytes}"]} for d in ("/tmp", "/dev/shm")),
            *binds,
            {"destination": "/out", "type": "bind", "source": str(output), "options": ["rbind", "rw", "nosuid", "nodev"]},
        ],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]},
    }
