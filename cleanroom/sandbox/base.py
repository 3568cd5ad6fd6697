"""The sandbox launcher interface: what every backend (runsc, bubblewrap, Kubernetes) accepts and returns.

A sandbox runs one command with no network, a read-only view of the interpreter and the service's
own code, read-only inputs, one writable output directory, an empty environment (plus what the
request names), and hard limits. Nothing of the state directory, no key and no secret is visible.
"""

from __future__ import annotations

import enum
import hashlib
import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class SandboxPolicy:
    """Limits; `digest()` feeds the enclave measurement, so a changed policy is a changed enclave."""

    memory_bytes: int = 4 << 30
    max_processes: int = 64
    max_file_bytes: int = 512 << 20
    max_output_bytes: int = 1 << 30
    cpu_seconds: int = 600
    wall_seconds: float = 300.0
    tmpfs_bytes: int = 256 << 20
    max_log_bytes: int = 256 << 10  # stdout and stderr are each cut to this

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class SandboxRequest:
    argv: tuple[str, ...]                                     # run inside; the interpreter is `python3`
    inputs: dict[str, Path] = field(default_factory=dict)     # read-only at /in/<name>
    output_dir: Path | None = None                            # writable at /out; must be empty
    env: dict[str, str] = field(default_factory=dict)         # the whole environment inside
    stdin: bytes = b""
    workdir: str = "/out"
    # Set by the caller to stop the run early (a cancelled job): the local backends kill the whole
    # sandbox (cgroup and process group) within a poll interval and report Outcome.CANCELLED.
    cancel: threading.Event | None = field(default=None, compare=False, repr=False)


class Outcome(enum.Enum):
    EXITED = "exited"              # see exit_code
    WALL_TIME = "wall_time"        # killed at the wall-clock limit
    MEMORY = "memory"              # killed for memory
    OUTPUT_TOO_LARGE = "output_too_large"
    LAUNCH_FAILED = "launch_failed"
    CANCELLED = "cancelled"        # killed because the caller set request.cancel


@dataclass(frozen=True)
class SandboxResult:
    outcome: Outcome
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    backend: str          # "runsc", "bwrap", "kubernetes"
    backend_reason: str   # why this backend was chosen, for the intake report
    seconds: float

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.EXITED and self.exit_code == 0


def error_type(stderr: bytes) -> str:
    """The class name of the exception a sandboxed Python died with, from its last stderr line;
    never its message, which could quote a data value, so this alone may be logged."""
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    name = lines[-1].split(":", 1)[0].strip() if lines else ""
    return name if name.replace(".", "").replace("_", "").isalnum() and len(name) < 100 else "unknown"


class SetupError(Exception):
    """A sandbox could not be set up (its tool is missing, a mount was refused, no cgroup): nothing ran."""


class SandboxLauncher(Protocol):
    @property
    def name(self) -> str:
        """The backend's name in the registry (backends.py), as in SandboxResult.backend."""
        ...

    def available(self) -> tuple[bool, str]:
        """Whether this backend works on this host, and why not when it does not."""
        ...

    def run(self, request: SandboxRequest, policy: SandboxPolicy) -> SandboxResult: ...
