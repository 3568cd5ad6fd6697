"""The metered launcher counts starts, failures and kills, and fails closed without a backend."""

from __future__ import annotations

from cleanroom.observability.metrics import Metrics
from cleanroom.sandbox.base import Outcome, SandboxPolicy, SandboxRequest, SandboxResult
from cleanroom.sandbox.metered import MeteredLauncher


class Scripted:
    name = "bwrap"

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome

    def available(self) -> tuple[bool, str]:
        return True, "scripted"

    def run(self, request: SandboxRequest, policy: SandboxPolicy) -> SandboxResult:
        return SandboxResult(self.outcome, None, b"", b"", "bwrap", "scripted", 2.0)


def _value(metrics: Metrics, name: str, labels: tuple[str, ...]) -> float:
    return next(s.value for m in metrics.registry.collect() for s in m.samples if s.name == name and tuple(s.labels.values()) == labels)


def test_counts_by_outcome() -> None:
    metrics = Metrics()
    for outcome in (Outcome.EXITED, Outcome.WALL_TIME, Outcome.MEMORY, Outcome.LAUNCH_FAILED):
        MeteredLauncher(lambda o=outcome: (Scripted(o), "scripted"), metrics, "intake").run(SandboxRequest(argv=("true",)), SandboxPolicy())
    assert _value(metrics, "cleanroom_sandbox_starts_total", ("bwrap", "intake")) == 3
    assert _value(metrics, "cleanroom_sandbox_failures_total", ("bwrap", "intake")) == 1
    assert _value(metrics, "cleanroom_sandbox_kills_total", ("bwrap", "wall_time")) == 1
    assert _value(metrics, "cleanroom_sandbox_kills_total", ("bwrap", "memory")) == 1


def test_no_backend_fails_closed() -> None:
    def unavailable():
        raise RuntimeError("no sandbox backend here")

    result = MeteredLauncher(unavailable, Metrics(), "intake").run(SandboxRequest(argv=("true",)), SandboxPolicy())
    assert result.outcome is Outcome.LAUNCH_FAILED and not result.ok
