"""Runs one atheris harness in its own process, bounded, and reads what libFuzzer reports.

Bounded by a count (`runs`, what `make test` uses, with a generous wall-clock cap beside it that a
healthy run never reaches) or by time (`seconds`, `make fuzz` and `make proof`). A crash is any
input libFuzzer saved (crash-, timeout-, oom-, leak-), or a harness that died or overran the cap.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = {   # harness -> what it fuzzes
    "csv_reader": "CSV reader (datasets/readers.py)",
    "parquet_reader": "Parquet reader (datasets/readers.py)",
    "manifest": "model manifest (models/intake/manifest.py)",
    "archive": "package zip checks (models/intake/archive.py, package.py)",
    "safetensors_header": "safetensors header (models/intake/safetensors_check.py)",
    "program": "exported-program validator (program_json.py, artifact.py, validate.py)",
}
CRASH_PREFIXES = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")
MAX_LEN = 1 << 18                 # inputs up to 256 KiB: the seeds (an exported program's JSON) are ~20 KiB
PER_INPUT_SECONDS = 60            # one input running longer is a hang
RSS_LIMIT_MB = 3072               # past it, a memory blow-up (the program harness holds torch, ~0.4 GiB)
COUNT_CAP_SECONDS = 600           # the wall-clock cap beside a count: far past what a healthy run needs
_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


@dataclass
class TargetResult:
    target: str
    seconds: float
    executions: int = 0
    coverage: int = 0             # libFuzzer's "cov": instrumented edges (Python branches) reached
    features: int = 0             # libFuzzer's "ft"
    corpus: int = 0
    crashes: list[Path] = field(default_factory=list)
    problem: str = ""             # the harness died or overran its cap without saving an input
    tail: str = ""

    @property
    def ok(self) -> bool:
        return not self.crashes and not self.problem


def command(target: str, corpus: Path, artifacts: Path, *, runs: int | None, seconds: float | None,
            canary: bool = False) -> list[str]:
    bound = [f"-runs={runs}", f"-max_total_time={COUNT_CAP_SECONDS}"] if runs is not None else [f"-max_total_time={int(seconds or 60)}"]
    flags = [f"-max_len={MAX_LEN}", f"-timeout={PER_INPUT_SECONDS}", f"-rss_limit_mb={RSS_LIMIT_MB}", "-seed=1",
             f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]
    return [sys.executable, str(HERE / f"{target}.py"), *bound, *flags, *(["--canary"] if canary else []), str(corpus)]


def run_target(target: str, workdir: Path, *, runs: int | None = None, seconds: float | None = None,
               canary: bool = False) -> TargetResult:
    """Fuzz one harness; its corpus and saved inputs live under workdir/<target>/."""
    corpus, artifacts = workdir / target / "corpus", workdir / target / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    cap = (COUNT_CAP_SECONDS if runs is not None else float(seconds or 60)) + 120  # start-up (torch) on a busy machine
    started = time.monotonic()
    try:
        done = subprocess.run(command(target, corpus, artifacts, runs=runs, seconds=seconds, canary=canary),
                              capture_output=True, text=True, errors="replace", timeout=cap)
        output, problem = done.stdout + done.stderr, "" if done.returncode == 0 else f"exit status {done.returncode}"
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"").decode(errors="replace") + (expired.stderr or b"").decode(errors="replace")
        problem = f"overran its {cap:.0f} s cap (a hang libFuzzer did not catch)"
    result = TargetResult(target, time.monotonic() - started, tail=output[-4000:])
    _read_status(output, result)
    result.crashes = sorted(p for p in artifacts.iterdir() if p.name.startswith(CRASH_PREFIXES))
    result.problem = "" if result.crashes else problem
    return result


def _read_status(output: str, result: TargetResult) -> None:
    for line in output.splitlines():
        status = _STATUS.match(line)
        if status:
            result.executions = max(result.executions, int(status[1]))
            result.coverage, result.features, result.corpus = int(status[2]), int(status[3]), int(status[4])
        elif line.startswith("stat::number_of_executed_units:"):
            result.executions = max(result.executions, int(line.split(":")[-1]))
