"""The test-only way the noiseless worker reaches a real job: a sandbox launcher wrapper that runs
tests/faults/noiseless.py instead of `python3 -m cleanroom.worker`, mounting this folder read-only
at /in/faults. A test installs it on a running server's job runner from its own Python; no
configuration, flag or environment variable can."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cleanroom.sandbox.base import SandboxLauncher, SandboxPolicy, SandboxRequest, SandboxResult

FAULTS = Path(__file__).resolve().parent
NOISELESS_ARGV = ("python3", "/in/faults/noiseless.py")


class NoiselessWorker:
    """Wraps the server's launcher; every other call goes to it unchanged."""

    def __init__(self, inner: SandboxLauncher) -> None:
        self.inner = inner

    def run(self, request: SandboxRequest, policy: SandboxPolicy) -> SandboxResult:
        faulty = dataclasses.replace(request, argv=NOISELESS_ARGV, inputs={**request.inputs, "faults": FAULTS})
        return self.inner.run(faulty, policy)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
