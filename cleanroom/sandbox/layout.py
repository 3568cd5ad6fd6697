"""What every backend shows the sandboxed process: the same mounts, /etc, environment and limits.

Only named directories are mounted, each read-only, and at fixed neutral paths identical on every
host, because anything the sandbox can read, a model's phase A can encode into its initial weights
(the venv's location would tell where the service is installed):

    /opt/cleanroom/python   the base interpreter's prefix (unless it is the system's, under /usr)
    /opt/cleanroom/venv     the virtualenv: a generated skeleton (pyvenv.cfg naming the neutral
                            home, bin/python3 linking to the neutral interpreter) over which the
                            venv's lib/ is bound; .pth files, editable finders and direct_url.json
                            that name host paths are overlaid by copies naming the neutral ones
    /opt/cleanroom/src      the service's own packages, when they live outside the venv (a checkout)

plus the system's /usr. Never a home directory or an ancestor of one, never anything that
overlaps a denied path (the state directory), never the host's /etc (a minimal one is generated).
"""

from __future__ import annotations

import functools
import os
import re
import stat
import sys
import sysconfig
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


# Where the sandbox sees the interpreter and the service's code, on every host.
NEUTRAL_PYTHON = "/opt/cleanroom/python"
NEUTRAL_VENV = "/opt/cleanroom/venv"
NEUTRAL_SRC = "/opt/cleanroom/src"
_PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
# Files of the venv's site-packages that may name host paths, rewritten to the neutral ones.
_OVERLAY_GLOBS = ("*.pth", "__editable__*.py", "*.egg-link", "*.dist-info/direct_url.json")
_MAX_OVERLAY_BYTES = 1 << 20


def code_dir() -> Path:
    """The `cleanroom` package directory (this file lives in cleanroom/sandbox/)."""
    return Path(__file__).resolve().parents[1]


def code_dirs() -> list[Path]:
    """The service's own packages a worker may import: `cleanroom` and its sibling `enclave_sim`."""
    sibling = code_dir().parent / "enclave_sim"
    return [code_dir(), *([sibling] if sibling.is_dir() else [])]


@dataclass(frozen=True)
class HostPython:
    """The host's interpreter, resolved: its base prefix, its virtualenv and its real binary."""

    base: Path
    venv: Path | None
    binary: Path

    @property
    def base_moved(self) -> bool:
        """False for a system interpreter, already visible (and neutral) under /usr."""
        return not _inside_any(self.base, [Path(d) for d in SYSTEM_DIRS])

    @property
    def base_inside(self) -> str:
        return NEUTRAL_PYTHON if self.base_moved else str(self.base)

    def inside(self, path: Path) -> str:
        """A host path under the base prefix as the sandbox sees it."""
        if self.base_moved and _inside(path, self.base):
            return str(Path(NEUTRAL_PYTHON) / path.relative_to(self.base))
        return str(path)

    def renames(self) -> list[tuple[str, str]]:
        """(host path, neutral path), longest host path first, for rewriting files that name them."""
        pairs = [(str(self.base), NEUTRAL_PYTHON)] if self.base_moved else []
        if self.venv is not None:
            pairs += [(str(self.venv), NEUTRAL_VENV), (str(Path(sys.prefix).absolute()), NEUTRAL_VENV)]
        if outside_code_dirs():
            pairs.append((str(code_dir().parent), NEUTRAL_SRC))
        return sorted(set(pairs), key=lambda pair: -len(pair[0]))


@functools.cache
def host_python() -> HostPython:
    base, prefix = Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()
    return HostPython(base=base, venv=prefix if prefix != base else None, binary=Path(sys.executable).resolve())


def outside_code_dirs() -> list[Path]:
    """The code directories not already inside the venv, the base prefix or /usr (a checkout)."""
    py = host_python()
    hosts = [Path(d) for d in SYSTEM_DIRS] + [p for p in (py.venv, py.base) if p is not None]
    return [c for c in code_dirs() if not _inside_any(c, hosts)]


def interpreter_dirs() -> list[Path]:
    """The host directories behind the interpreter's mounts: the base prefix (unless under /usr)
    and the virtualenv."""
    py = host_python()
    return [*([py.base] if py.base_moved else []), *([py.venv] if py.venv is not None else [])]


def python_bin_dir() -> str:
    """Where `python3` lives as seen inside: the venv's bin when there is one."""
    py = host_python()
    return f"{NEUTRAL_VENV}/bin" if py.venv is not None else f"{py.base_inside}/bin"


def python() -> str:
    """The interpreter's absolute path inside the sandbox (what `python3` on PATH finds)."""
    return f"{python_bin_dir()}/python3"


def library_path() -> str | None:
    """A shared libpython in a moved prefix: the binary's RUNPATH names the host prefix, so the
    loader is told the neutral one."""
    py, name = host_python(), sysconfig.get_config_var("LDLIBRARY")
    shared = bool(sysconfig.get_config_var("Py_ENABLE_SHARED")) and isinstance(name, str)
    return f"{NEUTRAL_PYTHON}/lib" if py.base_moved and shared and (py.base / "lib" / str(name)).exists() else None


def venv_skeleton(staging: Path, venv: Path) -> Path:
    """What of the venv is generated: pyvenv.cfg (its `home` and the command that made it name
    host paths), bin/ (its python3 is a link to the host binary, its scripts' shebangs name the
    venv) and an empty lib/ for the venv's own lib/ to be bound onto."""
    py = host_python()
    root = staging / "venv"
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    os.symlink("lib", root / "lib64")
    for name in ("python", "python3", f"python{_PY_VERSION}"):
        os.symlink(py.inside(py.binary), root / "bin" / name)
    system = "true" if "include-system-site-packages = true" in _read_small(venv / "pyvenv.cfg") else "false"
    (root / "pyvenv.cfg").write_text(f"home = {py.base_inside}/bin\ninclude-system-site-packages = {system}\n"
                                     f"version = {'.'.join(map(str, sys.version_info[:3]))}\n")
    return root


def _read_small(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            return handle.read(_MAX_OVERLAY_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""


@functools.cache
def venv_overlays() -> tuple[tuple[str, str], ...]:
    """(path under the venv, text) for each site-packages file naming a host path, rewritten. An
    editable install's .pth names the checkout: site.py would skip it inside (the path does not
    exist there) but the package could still read the file."""
    py = host_python()
    if py.venv is None:
        return ()
    site = py.venv / "lib" / f"python{_PY_VERSION}" / "site-packages"
    renames, found = py.renames(), []
    for path in sorted({p for pattern in _OVERLAY_GLOBS for p in site.glob(pattern) if p.is_file()}):
        text = _read_small(path)
        if any(host in text for host, _ in renames):
            for host, neutral in renames:
                text = text.replace(host, neutral)
            found.append((str(path.relative_to(py.venv)), text))
    return tuple(found)


def interpreter_mounts(staging: Path) -> list[Mount]:
    """The base prefix, and the venv composed of its skeleton, its lib/ and the overlays."""
    py = host_python()
    mounts = [Mount(py.base, NEUTRAL_PYTHON)] if py.base_moved else []
    if py.venv is not None:
        mounts += [Mount(venv_skeleton(staging, py.venv), NEUTRAL_VENV), Mount(py.venv / "lib", f"{NEUTRAL_VENV}/lib")]
        (staging / "overlays").mkdir()
        for index, (relative, text) in enumerate(venv_overlays()):
            copy = staging / "overlays" / str(index)
            copy.write_text(text)
            mounts.append(Mount(copy, f"{NEUTRAL_VENV}/{relative}"))
    return mounts


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


def readonly_mounts(request: SandboxRequest, guard: MountGuard, staging: Path) -> list[Mount]:
    """Interpreter, venv, service code (at the neutral paths) and inputs, each checked against the
    guard, in mount order; `staging` is an empty per-run directory for the generated parts."""
    mounts = interpreter_mounts(staging)
    mounts += [Mount(code, f"{NEUTRAL_SRC}/{code.name}") for code in outside_code_dirs()]
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
    """Exactly the request's variables plus PATH, HOME and, for a moved shared interpreter,
    LD_LIBRARY_PATH (the request may override them); every value neutral."""
    env = {"PATH": f"{python_bin_dir()}:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"}
    if (libraries := library_path()) is not None:
        env["LD_LIBRARY_PATH"] = libraries
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
