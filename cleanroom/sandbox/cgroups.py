"""A throw-away cgroup per sandbox run (v1 or v2): a task limit, a memory limit, OOM evidence, kill.

Why a cgroup and not only rlimits: RLIMIT_NPROC is counted per host user and never enforced for
host root, which is what bubblewrap's sandbox is when the service runs as root (the user namespace
maps the sandbox uid to it), so a fork bomb walks straight past it. A pids cgroup counts exactly
this sandbox's tasks. The memory controller gives a real RSS limit and, unlike an exit status,
tells for certain whether the kernel OOM-killed something.

The cgroup is made below the launcher's own cgroup, so any limit placed on the service still holds.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

PREFIX = "cleanroom-sandbox-"


class CgroupError(Exception):
    """No writable cgroup hierarchy with the controllers asked for."""


def _own_paths() -> dict[str, str]:
    """controller -> this process's cgroup path; "" keys the v2 unified hierarchy."""
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _mounts() -> dict[str, tuple[str, str]]:
    """controller -> (mount root inside the hierarchy, mount point); "" for cgroup2."""
    found: dict[str, tuple[str, str]] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        fstype, options = fields[sep + 1], fields[sep + 3].split(",")
        if fstype == "cgroup":
            for opt in options:
                found.setdefault(opt, (fields[3], fields[4]))
        elif fstype == "cgroup2":
            found.setdefault("", (fields[3], fields[4]))
    return found


def _own_dir(key: str, mounts: dict[str, tuple[str, str]], paths: dict[str, str]) -> Path | None:
    if key not in mounts or key not in paths:
        return None
    root, point = mounts[key]
    rel = os.path.relpath(paths[key], root)
    return None if rel.startswith("..") else Path(point) / rel


def _parent_dir(controller: str) -> tuple[Path, int]:
    """The launcher's own cgroup directory for a controller, v1 first, and the version."""
    mounts, paths = _mounts(), _own_paths()
    v1 = _own_dir(controller, mounts, paths)
    if v1 is not None and v1.is_dir():
        return v1, 1
    v2 = _own_dir("", mounts, paths)
    if v2 is not None and controller in (v2 / "cgroup.subtree_control").read_text().split():
        return v2, 2
    raise CgroupError(f"no writable {controller} cgroup for this process")


_LIMIT_FILES = {
    (1, "memory"): ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"),
    (2, "memory"): ("memory.max", "memory.swap.max"),
    (1, "pids"): ("pids.max", None),
    (2, "pids"): ("pids.max", None),
}


@dataclass
class Cgroup:
    dirs: dict[str, tuple[Path, int]]   # controller -> (directory, cgroup version)

    @classmethod
    def create(cls, limits: dict[str, int]) -> Cgroup:
        """limits: {"memory": bytes, "pids": tasks}; raises CgroupError when it cannot."""
        group, name = cls({}), f"{PREFIX}{uuid.uuid4().hex[:16]}"
        try:
            for controller, value in limits.items():
                group._add(controller, value, name)
        except (OSError, CgroupError) as exc:
            group.remove()
            raise CgroupError(f"cannot set up the {controller} cgroup: {exc}") from exc
        return group

    def _add(self, controller: str, value: int, name: str) -> None:
        parent, version = _parent_dir(controller)
        path = parent / name
        if path not in [d for d, _ in self.dirs.values()]:
            path.mkdir()
        self.dirs[controller] = (path, version)
        main, swap = _LIMIT_FILES[(version, controller)]
        (path / main).write_text(str(value))
        if swap and (path / swap).exists():
            (path / swap).write_text(str(value) if version == 1 else "0")

    def procs_files(self) -> list[str]:
        """The cgroup.procs files a process writes its pid to, to join (one per hierarchy)."""
        return sorted({str(d / "cgroup.procs") for d, _ in self.dirs.values()})

    def oom_killed(self) -> bool:
        if "memory" not in self.dirs:
            return False
        path, version = self.dirs["memory"]
        text = (path / ("memory.oom_control" if version == 1 else "memory.events")).read_text()
        counters = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(counters.get("oom_kill", "0")) > 0

    def pids(self) -> set[int]:
        found = set()
        for procs in self.procs_files():
            try:
                found |= {int(p) for p in Path(procs).read_text().split()}
            except OSError:
                pass
        return found

    def kill_all(self, patience: float = 5.0) -> None:
        """SIGKILL everything inside, again and again until nothing is left (a fork bomb races)."""
        deadline = time.monotonic() + patience
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    def remove(self) -> None:
        self.kill_all()
        for path, _ in self.dirs.values():
            try:
                path.rmdir()
            except OSError:
                pass  # already gone, or a straggler: nothing more to do than kill_all did


def sweep_stale(min_age_seconds: float = 600.0) -> int:
    """Removes the empty per-run cgroups a killed launcher left behind (a SIGKILLed server never
    reaches Cgroup.remove; its sandbox died with it). Only empty ones older than min_age_seconds:
    a run starting right now (cgroup made, process not yet in it) is never touched, and the kernel
    refuses to remove a cgroup with a process in it anyway. Returns how many went."""
    mounts, paths = _mounts(), _own_paths()
    parents = {d for key in ("pids", "memory", "") if (d := _own_dir(key, mounts, paths)) is not None}
    removed, now = 0, time.time()
    for parent in parents:
        try:
            children = sorted(parent.glob(f"{PREFIX}*"))
        except OSError:
            continue
        for child in children:
            try:
                if (child / "cgroup.procs").read_text().strip() or now - child.stat().st_mtime < min_age_seconds:
                    continue
                child.rmdir()
                removed += 1
            except OSError:
                pass
    return removed
