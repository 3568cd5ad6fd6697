"""Model intake as one service call: package zip in, report (and on acceptance a model version) out.

    package checks (no code runs) -> phase A in a fresh sandbox -> artifact read back safely
    -> export validation -> the artifact re-serialised by the service, ready to store

No gRPC and no database here: the caller stores the outcome. Each run uses its own workdir and a
fresh sandbox; nothing of one submission is visible to the next.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cleanroom.models.intake.limits import IntakeLimits
from cleanroom.models.intake.manifest import Manifest
from cleanroom.models.intake.package import Package, load_package
from cleanroom.models.intake.reasons import IntakeRejected, Reason
from cleanroom.models.intake.report import IntakeReport, SandboxSummary, bounded_text
from cleanroom.sandbox.base import Outcome, SandboxLauncher, SandboxPolicy, SandboxRequest, SandboxResult

PHASE_A_ARGV = ("python3", "-m", "cleanroom.models.intake.phase_a")
ARTIFACT_NAME = "exported.safetensors"     # what phase A writes under /out
STORED_ARTIFACT = "model.exported.safetensors"


@dataclass(frozen=True)
class IntakeOutcome:
    report: IntakeReport
    package_digest: str | None = None
    manifest: Manifest | None = None
    artifact_path: Path | None = None     # the service's own re-serialisation of the validated program
    artifact_sha256: str | None = None

    @property
    def accepted(self) -> bool:
        return self.report.accepted


class ModelIntake:
    def __init__(self, launcher_preference: str = "auto", limits: IntakeLimits | None = None, *,
                 deny: Sequence[Path] = (), launcher: SandboxLauncher | None = None,
                 launcher_reason: str = "injected") -> None:
        """`deny`: paths no sandbox mount may overlap (pass the state directory). `launcher`
        replaces choose_launcher's pick, e.g. to share one probed launcher between instances."""
        self._preference = launcher_preference
        self._limits = limits or IntakeLimits()
        self._deny = tuple(Path(p) for p in deny)
        self._launcher = launcher
        self._launcher_reason = launcher_reason
        self._lock = threading.Lock()

    @property
    def limits(self) -> IntakeLimits:
        return self._limits

    def run(self, package_zip: Path, workdir: Path) -> IntakeOutcome:
        """Intake one submission; `workdir` must be an empty or missing directory owned by the service."""
        report = IntakeReport()
        started = time.monotonic()
        try:
            return self._run(Path(package_zip), Path(workdir), report)
        except IntakeRejected as exc:
            report.reject(exc.findings)
            return IntakeOutcome(report=report, package_digest=report.package_digest)
        finally:
            report.timings["total_seconds"] = round(time.monotonic() - started, 4)

    def _run(self, package_zip: Path, workdir: Path, report: IntakeReport) -> IntakeOutcome:
        package = self._check_package(package_zip, report)
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            raise ValueError(f"{workdir}: workdir must be empty")
        from cleanroom.models.intake.archive import unpack

        unpack(package.files, workdir / "package")
        self._phase_a(workdir, report)
        return self._validate_and_store(package, workdir, report)

    def _check_package(self, package_zip: Path, report: IntakeReport) -> Package:
        started = time.monotonic()
        size = package_zip.stat().st_size
        if size > self._limits.max_zip_bytes:
            raise IntakeRejected(Reason.ARCHIVE_TOO_LARGE, f"the zip is {size} bytes; the limit is {self._limits.max_zip_bytes}")
        package = load_package(package_zip.read_bytes(), self._limits)
        report.package_digest = package.digest
        report.manifest = package.manifest.to_dict()
        report.timings["package_check_seconds"] = round(time.monotonic() - started, 4)
        return package

    def launcher(self) -> tuple[SandboxLauncher, str]:
        """The sandbox backend and why it was chosen; probed once, on first use."""
        with self._lock:
            if self._launcher is None:
                from cleanroom.sandbox import choose_launcher

                self._launcher, self._launcher_reason = choose_launcher(self._preference, deny=self._deny)
            return self._launcher, self._launcher_reason

    def _phase_a(self, workdir: Path, report: IntakeReport) -> None:
        try:
            launcher, reason = self.launcher()
        except Exception as exc:  # no backend works on this host: fail closed, never run unsandboxed
            raise IntakeRejected(Reason.SANDBOX_UNAVAILABLE, f"no intake sandbox is available: {exc}") from None
        out = workdir / "out"
        out.mkdir()
        request = SandboxRequest(argv=PHASE_A_ARGV, inputs={"package": workdir / "package"}, output_dir=out, env={})
        result = launcher.run(request, self._limits.sandbox)
        self._record_sandbox(result, reason, out, report)
        _raise_for_outcome(result, self._limits, report.manufacturer_traceback)

    def _record_sandbox(self, result: SandboxResult, reason: str, out: Path, report: IntakeReport) -> None:
        from cleanroom.models.intake.phase_a import ERROR_NAME, SUMMARY_NAME

        limit = self._limits.max_report_text
        report.sandbox = SandboxSummary(result.backend, result.backend_reason or reason, result.outcome.value,
                                        result.exit_code, round(result.seconds, 4))
        report.sandbox_stdout = bounded_text(result.stdout, limit)
        report.sandbox_stderr = bounded_text(result.stderr, limit)
        report.timings["sandbox_seconds"] = round(result.seconds, 4)
        report.manufacturer_traceback = bounded_text(_read_output(out / ERROR_NAME, 4 * limit), limit)
        report.timings["phase_a_reported"] = _reported_timings(_read_output(out / SUMMARY_NAME, limit))

    def _validate_and_store(self, package: Package, workdir: Path, report: IntakeReport) -> IntakeOutcome:
        from cleanroom.models.intake.artifact import artifact_bytes, read_artifact
        from cleanroom.models.intake.validate import validate_program

        started = time.monotonic()
        limits = self._limits
        try:
            ep = read_artifact(workdir / "out" / ARTIFACT_NAME, max_bytes=limits.sandbox.max_output_bytes,
                               max_header_bytes=limits.max_header_bytes, max_tensors=limits.max_tensors,
                               max_nodes=limits.max_graph_nodes)
            result = validate_program(ep, package.manifest, limits)
        finally:
            report.timings["validation_seconds"] = round(time.monotonic() - started, 4)
        report.parameter_count, report.parameter_names = result.parameter_count, result.parameter_names
        report.trainable, report.op_histogram, report.output_shape = result.trainable, result.op_histogram, result.output_shape
        report.trainable_parameter_count = result.trainable_parameter_count
        if not result.accepted:
            raise IntakeRejected(result.findings[0].code, result.findings[0].message, *result.findings[1:])
        data = artifact_bytes(ep)
        path = workdir / STORED_ARTIFACT
        path.write_bytes(data)
        report.accepted = True
        return IntakeOutcome(report=report, package_digest=package.digest, manifest=package.manifest,
                             artifact_path=path, artifact_sha256=hashlib.sha256(data).hexdigest())


def _read_output(path: Path, max_bytes: int) -> bytes:
    """A file phase A left in /out: its first max_bytes, or nothing if it is not a plain file."""
    from cleanroom.models.intake.artifact import read_untrusted_file

    try:
        return read_untrusted_file(path, max_bytes, truncate=True)
    except OSError:
        return b""


def _reported_timings(data: bytes) -> dict[str, float]:
    try:
        timings = json.loads(data).get("timings", {})
    except (ValueError, AttributeError, RecursionError):
        return {}
    return {str(k)[:40]: float(v) for k, v in timings.items() if isinstance(v, (int, float))} if isinstance(timings, dict) else {}


def _raise_for_outcome(result: SandboxResult, limits: IntakeLimits, traceback_text: str) -> None:
    policy = limits.sandbox
    if result.outcome is Outcome.WALL_TIME:
        raise IntakeRejected(Reason.SANDBOX_WALL_TIME, f"phase A was killed at the wall-clock limit of {policy.wall_seconds:g} s")
    if result.outcome is Outcome.MEMORY:
        raise IntakeRejected(Reason.SANDBOX_MEMORY, f"phase A was killed at the memory limit of {policy.memory_bytes >> 20} MiB")
    if result.outcome is Outcome.OUTPUT_TOO_LARGE:
        raise IntakeRejected(Reason.SANDBOX_OUTPUT_TOO_LARGE, f"phase A wrote more than {policy.max_output_bytes} bytes")
    if result.outcome is Outcome.LAUNCH_FAILED:
        raise IntakeRejected(Reason.SANDBOX_UNAVAILABLE, f"the {result.backend} sandbox failed to start")
    if result.exit_code in (152, -24):  # SIGXCPU: the CPU-seconds rlimit's soft limit
        raise IntakeRejected(Reason.SANDBOX_CPU_TIME, f"phase A was killed at the CPU-time limit of {policy.cpu_seconds} s")
    if result.exit_code != 0:
        raise IntakeRejected(*_failure(traceback_text, policy, result.exit_code))


def _failure(traceback_text: str, policy: SandboxPolicy, exit_code: int | None) -> tuple[Reason, str]:
    """Name the limit when the manufacturer's traceback shows one was hit (their text, their reason)."""
    last = traceback_text.strip().splitlines()[-1] if traceback_text.strip() else ""
    if last.startswith("MemoryError"):
        return Reason.SANDBOX_MEMORY, f"phase A ran out of memory at the limit of {policy.memory_bytes >> 20} MiB"
    if last.startswith("BlockingIOError") and "fork" in traceback_text:
        return Reason.SANDBOX_PROCESSES, f"phase A hit the limit of {policy.max_processes} processes"
    return Reason.MODEL_FAILED, f"the model failed to build or export (exit status {exit_code}); see manufacturer_traceback"
