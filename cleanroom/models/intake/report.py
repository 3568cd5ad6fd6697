"""The intake report: what the manufacturer (and the data owners) learn about a submission.

Intake sees no private data, so the manufacturer's own traceback and the sandbox's output go back
in full, only cut to a bounded size. No host path, key or environment of the service appears here:
the sandbox never saw any.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from cleanroom.models.intake.reasons import Finding

CUT_MARK = "\n...[cut]...\n"


def bounded_text(data: bytes | str | None, limit: int) -> str:
    """Decoded text of at most about `limit` characters, keeping the head and the tail."""
    if not data:
        return ""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    if len(text) <= limit:
        return text
    half = max(limit // 2, 1)
    return text[:half] + CUT_MARK + text[-half:]


@dataclass(frozen=True)
class SandboxSummary:
    backend: str
    backend_reason: str
    outcome: str
    exit_code: int | None
    seconds: float


@dataclass
class IntakeReport:
    accepted: bool = False
    reasons: list[Finding] = field(default_factory=list)
    package_digest: str | None = None
    manifest: dict[str, Any] | None = None
    sandbox: SandboxSummary | None = None
    manufacturer_traceback: str = ""
    sandbox_stdout: str = ""
    sandbox_stderr: str = ""
    parameter_count: int | None = None
    parameter_names: list[str] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)
    trainable_parameter_count: int | None = None
    op_histogram: dict[str, int] = field(default_factory=dict)
    output_shape: list[int] | None = None
    # seconds: package_check, sandbox (start + export, wall clock seen by the service), validation,
    # total; phase_a_reported holds phase A's own breakdown (reported from inside, so untrusted).
    timings: dict[str, Any] = field(default_factory=dict)

    def reject(self, findings: tuple[Finding, ...] | list[Finding]) -> None:
        self.accepted = False
        self.reasons.extend(findings)

    @property
    def reason_codes(self) -> list[str]:
        return [f.code.value for f in self.reasons]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"] = [f.to_dict() for f in self.reasons]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    def summary_line(self) -> str:
        if self.accepted:
            return f"accepted: {self.parameter_count} parameters, {len(self.trainable)} trainable"
        return "rejected: " + "; ".join(f"{f.code.value}: {f.message}" for f in self.reasons)
