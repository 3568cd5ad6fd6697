"""Start-up self-check: can this host run every workload the configuration asks for?

`cleanroom serve` runs these checks before it builds anything and refuses to start when a required
one fails, so a missing sandbox tool is an operator's error at start-up, not a caller's UNAVAILABLE
an hour later. `cleanroom doctor` prints the same checks as a table.

Each sandbox check runs a real probe (`true` in the real sandbox, ~0.1 s for bubblewrap, ~0.3 s
for gVisor), the same probe the launchers run before their first use.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from cleanroom.sandbox.backends import Workload
from cleanroom.sandbox.backends import check as check_backend
from cleanroom.sandbox.cgroups import Cgroup, CgroupError
from cleanroom.server.config import ServerConfig

# One check per workload, in this order, under these names.
WORKLOADS = ((Workload.INTAKE, "sandbox: model intake"), (Workload.TRAINING, "sandbox: training and evaluation"),
             (Workload.STATISTICS, "sandbox: statistics"))


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True  # a failed required check refuses start-up; the others only warn

    @property
    def status(self) -> str:
        return "ok" if self.ok else ("FAIL" if self.required else "warn")


class StartupRefused(Exception):
    """One or more required checks failed; the message lists them, one per line."""


def run_checks(config: ServerConfig) -> list[Check]:
    checks = [*_sandbox_checks(config), _cgroups(), _database(config), _storage_identity(config), _key_file(config)]
    if config.metrics_listen:
        checks.append(_port("metrics port", config.metrics_listen))
    return checks


def require_passing(checks: list[Check]) -> list[Check]:
    """The checks, unless a required one failed."""
    failed = [check for check in checks if check.required and not check.ok]
    if failed:
        lines = "\n".join(f"  - {check.name}: {check.detail}" for check in failed)
        raise StartupRefused(f"refusing to start; these checks failed (run `cleanroom doctor` for all checks):\n{lines}")
    return checks


# --- sandboxes: one check per workload ---------------------------------------------------------


def _sandbox_checks(config: ServerConfig) -> Iterator[Check]:
    """The backend each workload would get (sandbox/backends.py), probed for real; a remote backend
    is not probed from here. A missing tool's message names how to install it."""
    for workload, name in WORKLOADS:
        ok, detail = check_backend(config.sandbox, workload, [config.state_dir])
        yield Check(name, ok, detail)


def _cgroups() -> Check:
    """Per-run task and memory limits. Bubblewrap as root cannot run without them (its probe fails)."""
    try:
        Cgroup.create({"pids": 8}).remove()
    except (CgroupError, OSError) as exc:
        return Check("cgroups", False, f"no writable cgroup hierarchy: {exc}", required=False)
    return Check("cgroups", True, "a per-run cgroup can be created")


# --- storage, keys, ports ----------------------------------------------------------------------


def _database(config: ServerConfig) -> Check:
    from cleanroom.storage.db import migration_state, sqlite_path

    path = sqlite_path(config.database_url)
    if path is not None and not path.exists():
        return Check("database", True, "SQLite file not created yet: start-up creates and migrates it")
    try:
        state = migration_state(config.database_url)
    except Exception as exc:  # noqa: BLE001 - any driver error means the same to an operator
        return Check("database", False, f"cannot connect: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    if state.damage:
        return Check("database", False, f"the SQLite file is damaged ({state.damage[:200]}); restore it from a backup")
    if state.current is not None and state.current not in state.known:
        return Check("database", False, f"at migration {state.current}, which this server does not know "
                                        "(written by a newer version?)")
    if state.current == state.head:
        return Check("database", True, f"reachable, migrations at head ({state.head})")
    start = "an empty database" if state.current is None else f"migration {state.current}"
    return Check("database", True, f"reachable; start-up will migrate from {start} to {state.head}")


def _storage_identity(config: ServerConfig) -> Check:
    """The database and the blob store name each other; a new or other database beside blobs is refused."""
    from cleanroom.storage.identity import StorageIdentityError, inspect

    try:
        verdict = inspect(config.database_url, config.blob_dir)
    except StorageIdentityError as exc:
        return Check("storage identity", False, str(exc))
    except Exception as exc:  # noqa: BLE001 - the database check reports why it cannot be read
        return Check("storage identity", False, f"not checked, the database cannot be read: {type(exc).__name__}",
                     required=False)
    return Check("storage identity", verdict.action != "refuse", verdict.detail)


def _key_file(config: ServerConfig) -> Check:
    from cleanroom.crypto import LocalKeyFileProvider

    path = LocalKeyFileProvider(config.state_dir).path
    if not path.exists():
        return Check("key file", True, "none yet: created (0600) at the first start")
    info = path.stat()
    if info.st_uid != os.geteuid():
        return Check("key file", False, f"owned by uid {info.st_uid}, not by this server's uid {os.geteuid()}")
    loose = stat.S_IMODE(info.st_mode) & 0o077
    if loose:
        return Check("key file", False, f"mode {stat.S_IMODE(info.st_mode):04o}: group or others may read it; "
                                        f"run: chmod 600 {path}")
    return Check("key file", True, "mode 0600, owned by this user")


def _port(name: str, address: str) -> Check:
    host, _, port = address.rpartition(":")
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), int(port)))
        except OSError as exc:
            reason = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            return Check(name, False, f"cannot listen on {address}: {reason}")
    return Check(name, True, f"{address} is free")
