"""Model intake time: the sandboxed intake against the same export done without a sandbox.

For a small MLP and a 1-D CNN (tests/model_packages), in one run:
- sandboxed: ModelIntake.run — package checks, a fresh sandbox (gVisor runsc, or bubblewrap), the
  export inside it, and validation outside;
- in-process: the same phase-A export code run in a fresh Python process without a sandbox (it
  pays the same cold torch import), plus the same validation.
The difference is what the sandbox adds. Target: under 5 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cleanroom.models.intake.artifact import read_artifact  # noqa: E402
from cleanroom.models.intake.pack import pack_package  # noqa: E402
from cleanroom.models.intake.package import load_package  # noqa: E402
from cleanroom.models.intake.service import ModelIntake  # noqa: E402
from cleanroom.models.intake.validate import validate_program  # noqa: E402

MODELS = ROOT / "tests" / "model_packages"
UNSANDBOXED = "import sys; from pathlib import Path; from cleanroom.models.intake.phase_a import main; sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))"


def sandboxed(intake: ModelIntake, package_dir: Path) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp, "package.zip")
        archive.write_bytes(pack_package(package_dir))
        start = time.perf_counter()
        outcome = intake.run(archive, Path(tmp, "work"))
        seconds = time.perf_counter() - start
    if not outcome.accepted:
        raise SystemExit(f"{package_dir.name} was rejected: {outcome.report.reason_codes}")
    return seconds, outcome.report.sandbox.backend if outcome.report.sandbox else "?"


def in_process(intake: ModelIntake, package_dir: Path) -> float:
    limits = intake.limits
    package = load_package(pack_package(package_dir), limits)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", UNSANDBOXED, str(package_dir), str(out)], check=True, cwd=package_dir)
        program = read_artifact(out / "exported.safetensors", max_bytes=limits.sandbox.max_output_bytes,
                                max_header_bytes=limits.max_header_bytes, max_tensors=limits.max_tensors,
                                max_nodes=limits.max_graph_nodes)
        validate_program(program, package.manifest, limits)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per model and path (the median is printed)")
    args = parser.parse_args()
    intake = ModelIntake("auto")
    intake.launcher()  # probe the backend once, outside the timings
    print(f"Model intake, median of {args.repeats} runs")
    for name in ("mlp", "cnn"):
        boxed = [sandboxed(intake, MODELS / name) for _ in range(args.repeats)]
        plain = [in_process(intake, MODELS / name) for _ in range(args.repeats)]
        box, base = statistics.median(s for s, _ in boxed), statistics.median(plain)
        verdict = "PASS" if box - base < 5 else "FAIL"
        print(f"{name:<4} sandboxed ({boxed[0][1]}) {box:5.2f} s   in-process {base:5.2f} s   "
              f"added {box - base:5.2f} s   ratio {box / base:4.2f}  (target: adds < 5 s: {verdict})")


if __name__ == "__main__":
    main()
