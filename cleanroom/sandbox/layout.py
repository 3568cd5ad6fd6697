"""What every backend shows the sandboxed process: the same mounts, /etc, environment and limits.

Only named directories are mounted, each read-only and at its host path (so the venv's symlinks
and pyvenv.cfg keep working): the system's /usr, the virtualenv, the base interpreter's prefix and
the service's own package. Never a home directory or an ancestor of one, never anything that
overlaps a denied path (the state directory), never the host's /etc (a minimal one is generated).
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cleanroom.sandbox.base import SandboxPolicy, SandboxRequest

SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/sbin")
_INPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ETC = {
    "passwd": "root:x:0:0:root:/tmp:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": "root:x:0:\nnogroup:x:65534:\n",
    "hosts": "127.0.0.1 localhost\n::1 localhost\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
}
# The CPU hard limit sits above the soft one so the process first gets SIGXCPU (exit 152), not a
# SIGKILL that would read as an OOM kill.
CPU_GRACE_SECONDS = 5


class LayoutError(Exception):
    """The request asks for a mount the policy forbids, or names a missing or odd path."""


@dataclass(frozen=True)
class Mount:
    source: Path
    dest: str
    writable: bool = False


@dataclass(frozen=True)
class Symlink:
    target: str
    dest: str


def code_dir() -> Path:
    """The `cleanroom` package directory (this file lives in cleanroom/sandbox/)."""
    return Path(__file__).resolve().parents[1]


def code_dirs() -> list[Path]:
    """The service's own packages a worker may import: `cleanroom` and its sibling `enclave_sim`."""
    sibling = code_dir().parent / "enclave_sim"
    return [code_dir(), *([sibling] if sibling.is_dir() else [])]


def interpreter_dirs() -> list[Path]:
    """The virtualenv and the base interpreter prefix, resolved, minus anything under /usr."""
    dirs: list[Path] = []
    for prefix in (sys.prefix, sys.base_prefix):
        path = Path(prefix).resolve()
        if path not in dirs and not _inside_any(path, [Path(d) for d in SYSTEM_DIRS]):
            dirs.append(path)
    return dirs


def python_bin_dir() -> str:
    """Where `python3` lives as seen inside: the venv's bin when there is one."""
    return str(Path(sys.prefix).resolve() / "bin")


def system_entries() -> tuple[list[Mount], list[Symlink]]:
    """/usr and friends; merged-/usr symlinks (/bin -> usr/bin) are recreated, not followed."""
    mounts, links = [], []
    for name in SYSTEM_DIRS:
        if os.path.islink(name):
            links.append(Symlink(os.readlink(name), name))
        elif os.path.isdir(name):
            mounts.append(Mount(Path(name), name))
    return mounts, links


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _inside_any(path: Path, parents: list[Path]) -> bool:
    return any(_inside(path, p) for p in parents)


@dataclass(frozen=True)
class MountGuard:
    """Refuses mounts that would expose the state directory, a home directory or the root."""

    deny: tuple[Path, ...] = ()

    def check(self, source: Path) -> None:
        real = source.resolve()
        for denied in (d.resolve() for d in self.deny):
            if _inside(real, denied) or _inside(denied, real):
                raise LayoutError(f"mount {source} overlaps a denied path")
        for home in {Path.home().resolve(), Path("/root")}:
            if _inside(home, real):
                raise LayoutError(f"mount {source} would expose {home}")


def input_mounts(request: SandboxRequest) -> list[Mount]:
    mounts = []
    for name, path in sorted(request.inputs.items()):
        if not _INPUT_NAME.match(name):
            raise LayoutError(f"bad input name {name!r}")
        if not Path(path).exists():
            raise LayoutError(f"input {name} does not exist")
        mounts.append(Mount(Path(path), f"/in/{name}"))
    return mounts


def readonly_mounts(request: SandboxRequest, guard: MountGuard) -> list[Mount]:
    """Interpreter, venv, service code and inputs, each checked against the guard."""
    mounts = [Mount(p, str(p)) for p in interpreter_dirs()]
    for code in code_dirs():
        if not any(_inside(code, m.source) for m in mounts):
            mounts.append(Mount(code, str(code)))
    mounts += input_mounts(request)
    for mount in mounts:
        guard.check(mount.source)
    return mounts


def check_output_dir(path: Path, guard: MountGuard) -> None:
    if not path.is_dir() or path.is_symlink():
        raise LayoutError("output_dir must be an existing directory")
    if any(path.iterdir()):
        raise LayoutError("output_dir must be empty")
    guard.check(path)


def scratch_output(scratch: Path) -> Path:
    """/out for a request without output_dir: discarded with the run's scratch directory."""
    out = scratch / "out"
    out.mkdir()
    return out


def write_etc(directory: Path) -> Path:
    """A minimal /etc: enough for getpwuid and localhost, and nothing of the host's."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in _ETC.items():
        (directory / name).write_text(text)
    return directory


def sandbox_env(request: SandboxRequest) -> dict[str, str]:
    """Exactly the request's variables plus PATH and HOME (the request may override both)."""
    env = {"PATH": f"{python_bin_dir()}:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"}
    for key, value in request.env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise LayoutError(f"bad environment variable name {key!r}")
        env[key] = value
    return env


def rlimits(policy: SandboxPolicy) -> list[tuple[str, int, int]]:
    """(name, soft, hard) for the sandboxed process; RLIMIT_AS is the memory limit."""
    return [
        ("RLIMIT_AS", policy.memory_bytes, policy.memory_bytes),
        ("RLIMIT_NPROC", policy.max_processes, policy.max_processes),
        ("RLIMIT_FSIZE", policy.max_file_bytes, policy.max_file_bytes),
        ("RLIMIT_CPU", policy.cpu_seconds, policy.cpu_seconds + CPU_GRACE_SECONDS),
        ("RLIMIT_CORE", 0, 0),
        ("RLIMIT_NOFILE", 1024, 1024),
    ]


def _entries(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under root, depth first, never following links; vanished entries are skipped."""
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
                    yield entry.path, st
        except OSError:
            continue  # removed or replaced while the sandbox runs


def tree_bytes(root: Path, stop_above: int) -> int:
    """Apparent size of everything under root; stops counting once past stop_above."""
    total = 0
    for _, st in _entries(root):
        total += st.st_size
        if total > stop_above:
            break
    return total


def scrub_output(root: Path) -> int:
    """After a run, keep only regular files and directories, without set-id bits.

    A symlink could point a later reader at a host secret, a FIFO could hang it, and the sandbox
    (host root behind bubblewrap's user namespace) could leave a setuid-root file on the host.
    Returns how many entries were removed.
    """
    removed = 0
    for path, st in list(_entries(root)):
        if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(st.st_mode) & 0o1777, follow_symlinks=False)
        else:
            os.unlink(path)
            removed += 1
    return removed
