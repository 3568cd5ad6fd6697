"""What the local launchers share: a binary found on PATH, a mount guard, and a cached real probe."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cleanroom.sandbox import layout
from cleanroom.sandbox.base import SandboxPolicy, SandboxRequest, SandboxResult


class ProbedLauncher:
    name = ""
    binary_name = ""
    probe_wall_seconds = 30.0
    works = ""  # the reason given when the probe succeeds

    def __init__(self, *, deny: Sequence[Path] = (), binary: str | None = None, reason: str = "") -> None:
        self.guard = layout.MountGuard(tuple(Path(d) for d in deny))
        self.binary = binary or shutil.which(self.binary_name)
        self.reason = reason or f"{self.name} requested"
        self._available: tuple[bool, str] | None = None

    def available(self) -> tuple[bool, str]:
        """Runs `true` once in a real sandbox; the answer is cached."""
        if self._available is None:
            self._available = self._probe()
        return self._available

    def _probe(self) -> tuple[bool, str]:
        if not self.binary:
            return False, f"{self.binary_name} is not installed"
        with tempfile.TemporaryDirectory(prefix="cleanroom-probe-") as out:
            result = self.run(SandboxRequest(argv=("true",), output_dir=Path(out)), SandboxPolicy(wall_seconds=self.probe_wall_seconds))
        if result.ok:
            return True, self.works
        detail = result.stderr.decode(errors="replace").strip()[-300:]
        return False, f"{self.binary_name} probe failed ({result.outcome.value}): {detail}"

    def run(self, request: SandboxRequest, policy: SandboxPolicy) -> SandboxResult:
        raise NotImplementedError
