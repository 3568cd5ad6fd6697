"""A launcher wrapper that counts what sandboxes do, for Prometheus: starts, failures to start,
kills at a limit, and wall time. The backend is chosen lazily, on first use, so a host without
any sandbox still starts the server (and intake then refuses submissions, failing closed).
Without metrics (a tool, a test) it only chooses lazily."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from cleanroom.sandbox.base import Outcome, SandboxLauncher, SandboxPolicy, SandboxRequest, SandboxResult

if TYPE_CHECKING:
    from cleanroom.observability.metrics import Metrics

KILLED = {Outcome.WALL_TIME: "wall_time", Outcome.MEMORY: "memory", Outcome.OUTPUT_TOO_LARGE: "output_too_large"}


class MeteredLauncher:
    def __init__(self, choose: Callable[[], tuple[SandboxLauncher, str]], metrics: Metrics | None, purpose: str) -> None:
        self._choose = choose
        self._metrics = metrics
        self._purpose = purpose
        self._lock = threading.Lock()
        self._inner: SandboxLauncher | None = None
        self.reason = ""

    @property
    def name(self) -> str:
        return self.inner().name

    def inner(self) -> SandboxLauncher:
        with self._lock:
            if self._inner is None:
                self._inner, self.reason = self._choose()
            return self._inner

    def available(self) -> tuple[bool, str]:
        return self.inner().available()

    def run(self, request: SandboxRequest, policy: SandboxPolicy) -> SandboxResult:
        try:
            inner = self.inner()
        except Exception as error:  # noqa: BLE001 - no backend on this host: fail closed, run nothing
            if self._metrics is not None:
                self._metrics.sandbox_failures.labels("none", self._purpose).inc()
            return SandboxResult(Outcome.LAUNCH_FAILED, None, b"", str(error).encode(), "none", str(error), 0.0)
        result = inner.run(request, policy)
        if self._metrics is not None:
            self._count(self._metrics, result.backend or self.name, result)
        return result

    def _count(self, metrics: Metrics, backend: str, result: SandboxResult) -> None:
        if result.outcome is Outcome.LAUNCH_FAILED:
            metrics.sandbox_failures.labels(backend, self._purpose).inc()
            return
        metrics.sandbox_starts.labels(backend, self._purpose).inc()
        metrics.sandbox_duration.labels(self._purpose).observe(result.seconds)
        if result.outcome in KILLED:
            metrics.sandbox_kills.labels(backend, KILLED[result.outcome]).inc()
