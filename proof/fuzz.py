"""Fuzzing: property-based requests against every RPC of a running server, and coverage-guided
fuzzing (atheris) of the parsers that read what callers send.

  RPCs     proof/rpc_fuzz.py: every RPC in the generated service descriptors, each sent
           --examples-per-rpc hypothesis examples (noise, nearly-valid and malformed requests, as
           allowed roles, nobody, garbage tokens) on a real `cleanroom serve`; never INTERNAL,
           UNKNOWN or DATA_LOSS, no traceback or server path to the caller, the server SERVING.
  parsers  proof/fuzz_targets/<target>.py, each in its own process for --seconds-per-target
           (or --runs-per-target executions): a crash is any exception but the project's own
           rejection error, a hang or unbounded memory; libFuzzer saves the input.

`make fuzz` runs this for longer (FUZZ_SECONDS per target); `make proof` runs `run(full=True)`
for PROOF.md; tests/proof/test_fuzz.py and test_rpc_fuzz.py run the fast sizes in `make test`.
Every crash found so far, and its fix and regression test, is listed in FINDINGS.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proof.fuzz_targets.runner import TARGETS, TargetResult, run_target  # noqa: E402
from proof.report import Section  # noqa: E402

WORKDIR = ROOT / ".state" / "fuzz"   # corpora and saved inputs of `make fuzz` (ignored by git)
FAST_RUNS = {"csv_reader": 2000, "parquet_reader": 600, "manifest": 3000, "archive": 1500,
             "safetensors_header": 3000, "program": 40}
FULL_SECONDS, FULL_EXAMPLES, FAST_EXAMPLES = 180, 300, 25


@dataclass(frozen=True)
class Finding:
    where: str
    crash: str
    fix: str
    test: str
    commit: str


FINDINGS = (
    Finding("parquet_reader", "a dictionary index past the dictionary's end: ArrowIndexError deep in the cast (INTERNAL)",
            "readers._next_parquet_batch validates each decoded batch: 'not a valid Parquet file'",
            "tests/datasets/test_reader_fuzz_regressions.py", "01d7666"),
    Finding("archive", "a zip entry named \"\\x00...\" reads as \"\": ZipInfo.is_dir() raised IndexError (INTERNAL)",
            "archive._check_entry refuses an empty name: ARCHIVE_PATH",
            "tests/models/test_archive_fuzz_regressions.py", "01d7666"),
    Finding("program", "a lifted parameter without parameter_name in the graph signature: KeyError (INTERNAL)",
            "artifact._signature_names: ARTIFACT_INVALID", "tests/models/test_artifact_fuzz_regressions.py", "8d4c8fa"),
    Finding("archive", "a central directory claiming zip version 23.5: zipfile's NotImplementedError (INTERNAL)",
            "read_package_zip takes it as an unreadable zip: ARCHIVE_INVALID", "tests/models/test_archive_fuzz_regressions.py",
            "9f347bc"),
    Finding("safetensors_header", "a tensor whose dtype is a JSON list: TypeError, unhashable (INTERNAL)",
            "_entry refuses a dtype that is not a string: SafetensorsError", "tests/models/test_safetensors_fuzz_regressions.py",
            "9f347bc"),
    Finding("program", "an exported program whose tensor_values is `false`: TypeError, not iterable (INTERNAL)",
            "program_json refuses tensor_values that are not a map: ARTIFACT_INVALID",
            "tests/models/test_artifact_fuzz_regressions.py", "9f347bc"),
    Finding("rpc JobService/SubmitTraining", "a 1 MiB feature-column name came back in the error's field path; the "
            "details exceeded gRPC's metadata limit and the client got RESOURCE_EXHAUSTED instead of INVALID_ARGUMENT",
            "api/errors.to_status bounds field paths, descriptions, messages and the violation list to fit 8 KiB",
            "tests/api/test_error_details_size.py", "b1894ee"),
)


def fuzz_targets(workdir: Path, *, seconds: float | None, runs: dict[str, int] | None,
                 only: list[str] | None = None) -> list[TargetResult]:
    results = []
    for target in only or list(TARGETS):
        print(f"fuzz: {target} ...", flush=True)
        result = run_target(target, workdir, runs=runs[target] if runs else None, seconds=seconds)
        print(f"fuzz: {target}: {result.executions} executions, cov {result.coverage}, "
              f"{'ok' if result.ok else 'CRASH ' + (result.problem or str(result.crashes[0]))}", flush=True)
        results.append(result)
    return results


@dataclass
class RpcRun:
    tally: object            # rpc_fuzz.Tally
    failures: dict[str, str]
    rpcs: int
    seconds: float


def fuzz_rpcs(workdir: Path, *, examples_per_rpc: int, model: bool, seed: int | None = None) -> RpcRun:
    """Every RPC against one server; a failing RPC is recorded and the others still run."""
    from cleanroom.api.auth import RULES
    from proof.rpc_fuzz import Tally, enumerate_rpcs, fuzz_rpc
    from proof.rpc_world import start_world

    started, tally, failures = time.monotonic(), Tally(), {}
    rpcs = enumerate_rpcs()
    world = start_world(Path(tempfile.mkdtemp(dir=workdir)), model=model)
    try:
        for rpc in rpcs:
            try:
                fuzz_rpc(world, rpc, RULES.get(rpc.path, frozenset()), examples_per_rpc=examples_per_rpc, tally=tally, seed=seed)
            except AssertionError as failure:
                failures[rpc.short] = str(failure)[:2000]
            print(f"fuzz: {rpc.short}: {dict(tally.codes[rpc.short])}", flush=True)
    finally:
        world.close()
    return RpcRun(tally, failures, len(rpcs), time.monotonic() - started)


# ---------------------------------------------------------------- the report


def _targets_table(results: list[TargetResult]) -> str:
    rows = ["| target | what it reads | time (s) | executions | coverage (edges / features) | corpus | crashes |",
            "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        crashes = "none" if r.ok else ", ".join(p.name for p in r.crashes) or r.problem
        rows.append(f"| `{r.target}` | {TARGETS[r.target]} | {r.seconds:.0f} | {r.executions:,} | {r.coverage} / {r.features} "
                    f"| {r.corpus} | {crashes} |")
    return "\n".join(rows)


def _rpc_table(run: RpcRun) -> str:
    tally = run.tally
    groups: dict[str, Counter[str]] = {}
    rpcs: Counter[str] = Counter()
    for short, codes in tally.codes.items():  # type: ignore[attr-defined]
        group = short.split("/")[0]
        groups.setdefault(group, Counter()).update(codes)
        rpcs[group] += 1
    rows = ["| service | RPCs | examples sent | statuses seen |", "|---|---:|---:|---|"]
    for group in sorted(groups):
        codes = groups[group]
        seen = ", ".join(f"{code} {n}" for code, n in codes.most_common())
        rows.append(f"| {group} | {rpcs[group]} | {sum(codes.values()):,} | {seen} |")
    return "\n".join(rows)


def _findings_list() -> str:
    return "\n".join(f"{n}. `{f.where}`: {f.crash}. Fixed: {f.fix} (commit {f.commit}); regression test `{f.test}`."
                     for n, f in enumerate(FINDINGS, 1))


def report(results: list[TargetResult], rpc: RpcRun | None, *, command: str) -> Section:
    body = ["Coverage-guided fuzzing (atheris 2.3.0, libFuzzer) of the parsers that read what callers send; each "
            "harness runs in its own process from a seed corpus of valid inputs; a crash is any exception but the "
            "project's own rejection error, an input running over 60 s, or memory over 3 GiB. Coverage counts the "
            "instrumented Python branches of `cleanroom` reached (pyarrow, zipfile and torch are not instrumented).",
            "", _targets_table(results), ""]
    if rpc is not None:
        body += [f"Property-based requests (hypothesis) against all {rpc.rpcs} RPCs of a running `cleanroom serve`, "
                 "enumerated from the service descriptors: noise built from each request's descriptor, a real request "
                 "with one field changed, and malformed bytes; client streams with a message mutated, dropped, repeated, "
                 "moved or added; as roles the RPC allows, and with no token, a garbage token or a refused role. Every "
                 "answer checked: never INTERNAL, UNKNOWN or DATA_LOSS; no traceback or server path; every error with "
                 f"its ErrorInfo; the server SERVING after each call. {rpc.seconds:.0f} s.", "", _rpc_table(rpc), ""]
        body += [f"- **{name}** failed: {text}" for name, text in sorted(rpc.failures.items())] or ["No RPC answer failed a check."]
        body.append("")
    body += ["Crashes found by fuzzing and fixed (each with a regression test holding its input):", "", _findings_list()]
    passed = all(r.ok for r in results) and (rpc is None or not rpc.failures)
    return Section(title="Fuzzing", command=command, body="\n".join(body), passed=passed)


def run(*, full: bool, out: Path) -> Section:
    """`make proof` size (full): FULL_SECONDS per target and FULL_EXAMPLES per RPC, a real model
    submitted so job RPCs have real names; fast: FAST_RUNS and FAST_EXAMPLES."""
    WORKDIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WORKDIR) as scratch:
        work = Path(scratch)
        results = fuzz_targets(work, seconds=FULL_SECONDS if full else None, runs=None if full else FAST_RUNS)
        rpc = fuzz_rpcs(work, examples_per_rpc=FULL_EXAMPLES if full else FAST_EXAMPLES, model=full)
        for result in results:   # keep what crashed where a person can find it
            for crash in result.crashes:
                kept = WORKDIR / "crashes" / result.target / crash.name
                kept.parent.mkdir(parents=True, exist_ok=True)
                kept.write_bytes(crash.read_bytes())
    size = f"--seconds-per-target {FULL_SECONDS} --examples-per-rpc {FULL_EXAMPLES} --with-model" if full else "--quick"
    return report(results, rpc, command=f".venv/bin/python proof/fuzz.py {size}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds-per-target", type=float, default=300, help="atheris time per harness (default 300)")
    parser.add_argument("--runs-per-target", type=int, help="a count of executions per harness instead of a time")
    parser.add_argument("--examples-per-rpc", type=int, default=FULL_EXAMPLES, help=f"hypothesis examples per RPC (default {FULL_EXAMPLES})")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated harnesses (default all: {', '.join(TARGETS)})")
    parser.add_argument("--skip-rpc", action="store_true", help="only the atheris harnesses")
    parser.add_argument("--with-model", action="store_true", help="submit a real model first (phase A once) so job RPCs get real names")
    parser.add_argument("--seed", type=int, help="hypothesis seed (default: derandomized, the same examples every run)")
    parser.add_argument("--workdir", type=Path, default=WORKDIR, help="corpora and saved crashing inputs (default .state/fuzz)")
    parser.add_argument("--quick", action="store_true", help="the sizes `make test` runs")
    args = parser.parse_args(argv)
    if args.quick:
        print(run(full=False, out=ROOT / "docs" / "proof").markdown())
        return 0
    only = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(only) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    runs = {t: args.runs_per_target for t in TARGETS} if args.runs_per_target else None
    results = fuzz_targets(args.workdir, seconds=args.seconds_per_target, runs=runs, only=only)
    rpc = None if args.skip_rpc else fuzz_rpcs(args.workdir, examples_per_rpc=args.examples_per_rpc, model=args.with_model,
                                               seed=args.seed)
    section = report(results, rpc, command="proof/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(section.markdown())
    print(f"fuzz: saved inputs and corpora under {args.workdir}")
    return 0 if section.passed else 1


if __name__ == "__main__":
    sys.exit(main())
