"""Bounded mixed load on a real server, then the books checked.

A fresh state directory and `cleanroom serve` on loopback (proof/load_world.py: a hospital, its
officer, two manufacturers, two shared datasets under auto-approving policies, the example model
package). Then a fixed number of `grpc.aio` clients for a fixed duration AND at most a fixed
number of requests (proof/load_gen.py) mix uploads, DP statistics queries, small training and
evaluation jobs (each runs a sandbox, so they are capped apart) and reads (WhoAmI, GetDataset,
ListDatasets, GetBudgets, GetJob, ListJobs, ListLedger, EstimateQuery), drawn from one seeded plan.

Reported: calls, throughput and p50 / p99 latency per operation and overall; every non-OK status
by code and reason, budget refusals (RESOURCE_EXHAUSTED/PRIVACY_BUDGET_EXHAUSTED: one share is
deliberately small) apart from the unexpected, any of which fails the run; the RSS of the server
and its children (sandboxes included) sampled every second; a plot (docs/proof/load.png).

Afterwards (proof/load_checks.py): the server is healthy; the audit chain verifies; the server
stops cleanly; the ledger in the state's database replays to the balances with no reservation left
open; the count of `stats.answer` audit entries equals the answers the clients received, and the
`job.released` entries are exactly the jobs the clients saw released. Any failure fails the section.

Sizes: `make proof` runs 16 clients for 180 s (at most 60,000 requests, 6 jobs) on the server's
defaults (`--sandbox auto`, one job at a time); `make test` 3 clients for 8 s (400 requests, 2 jobs),
the model's intake under bubblewrap (gVisor's ptrace platform adds ~8 s to phase A here) and two
job workers, so its two jobs overlap instead of queueing past the load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proof import load_checks as checks  # noqa: E402
from proof.load_gen import WEIGHTS, Load, LoadResult, Sample, percentile, plan  # noqa: E402
from proof.load_plot import plot  # noqa: E402
from proof.load_world import World, build, stop  # noqa: E402
from proof.report import FIGURES, Section  # noqa: E402

EXPECTED = frozenset({"RESOURCE_EXHAUSTED/PRIVACY_BUDGET_EXHAUSTED"})  # refusals the set-up provokes on purpose
FIGURE = "load.png"


@dataclass(frozen=True)
class Settings:
    clients: int
    duration: float      # seconds during which clients take new operations
    max_requests: int    # the plan's length: the cap on total requests
    max_jobs: int
    sandbox: str
    job_workers: int = 1  # the server's --job-workers (its default is 1)
    seed: int = 20


FULL = Settings(clients=16, duration=180.0, max_requests=60_000, max_jobs=6, sandbox="auto")
FAST = Settings(clients=3, duration=8.0, max_requests=400, max_jobs=2, sandbox="bwrap", job_workers=2)


@dataclass
class Outcome:
    settings: Settings
    result: LoadResult
    checks: list[checks.Check]
    section: Section


def run(*, full: bool, out: Path) -> Section:
    workdir = Path(tempfile.mkdtemp(prefix="cleanroom-proof-load-"))
    try:
        return execute(FULL if full else FAST, workdir=workdir, out=out).section
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def execute(settings: Settings, *, workdir: Path, out: Path) -> Outcome:
    """Set up, load, check; the state directory stays under `workdir` (the caller removes it)."""
    operations = plan(seed=settings.seed, max_requests=settings.max_requests, max_jobs=settings.max_jobs)
    world = build(workdir, sandbox=settings.sandbox, job_workers=settings.job_workers)
    try:
        load = Load(world, clients=settings.clients, duration=settings.duration, plan=operations, seed=settings.seed)
        host = f"{os.cpu_count()} CPU cores, 1-minute load average {os.getloadavg()[0]:.1f} as the load began"
        result = asyncio.run(load.run())
        found = after(world, result)
    finally:
        stop(world.server)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot(result, out / FIGURE)
    section = Section(title="Load: a bounded mixed load on a real server", command=_command(settings),
                      body=body(settings, result, found, host), passed=passed(result, found), figures=[figure])
    return Outcome(settings, result, found, section)


def after(world: World, result: LoadResult) -> list[checks.Check]:
    """The checks, in order: the live server's first, then the stopped server's database."""
    found = [checks.healthy(world.address, world.tokens["maker0"]), checks.audit_chain(world.address, world.tokens["officer"])]
    found.append(checks.stopped_cleanly(stop(world.server)))
    url = checks.database_url(world.state)
    found.append(checks.ledger_replays(url))
    audited, released = checks.audit_counts(url)
    found += [checks.answers_audited(result.answers, audited), checks.jobs_released(result.jobs),
              checks.jobs_audited(result.jobs, released)]
    return found


def unexpected(result: LoadResult) -> Counter[str]:
    return Counter(s.code for s in result.samples if s.code != "OK" and s.code not in EXPECTED)


def missing_kinds(result: LoadResult) -> list[str]:
    """Operation kinds that never succeeded once."""
    ok = {s.kind for s in result.samples if s.code == "OK"}
    return [k for k in WEIGHTS if k not in ok]


def passed(result: LoadResult, found: list[checks.Check]) -> bool:
    return not unexpected(result) and not missing_kinds(result) and all(c.passed for c in found)


# --- the section ---------------------------------------------------------------------------------


def _row(name: str, samples: list[Sample], seconds: float) -> str:
    ok = [s.seconds for s in samples if s.code == "OK"]
    expected = sum(1 for s in samples if s.code in EXPECTED)
    bad = len(samples) - len(ok) - expected
    latency = f"{percentile(ok, 50) * 1e3:.0f} | {percentile(ok, 99) * 1e3:.0f}" if ok else "- | -"
    return f"| {name} | {len(samples)} | {len(ok)} | {expected} | {bad} | {len(ok) / seconds:.1f} | {latency} |"


def operations_table(result: LoadResult) -> str:
    head = ("| operation | calls | ok | refused (expected) | unexpected | ok / s | p50 ms | p99 ms |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = [_row(kind, [s for s in result.samples if s.kind == kind], result.seconds) for kind in WEIGHTS]
    return "\n".join([head, *rows, _row("**all**", result.samples, result.seconds)])


def errors_table(result: LoadResult) -> str:
    codes = Counter(s.code for s in result.samples if s.code != "OK")
    if not codes:
        return "No call returned an error."
    rows = [f"| {code} | {count} | {'expected refusal' if code in EXPECTED else '**unexpected**'} |" for code, count in sorted(codes.items())]
    return "\n".join(["| status / reason | calls | class |", "|---|---:|---|", *rows])


def memory_line(result: LoadResult) -> str:
    if not result.rss:
        return "Memory: no sample was taken."
    mib = [r[1] / 2**20 for r in result.rss]
    peak = max(range(len(mib)), key=mib.__getitem__)
    return (f"Server RSS (its process and all children, sandboxes included; {len(mib)} samples, one a second): "
            f"{mib[0]:.0f} MiB at the start, peak {mib[peak]:.0f} MiB at {result.rss[peak][0]:.0f} s "
            f"({result.rss[peak][2]} processes), {mib[-1]:.0f} MiB at the end.")


def body(settings: Settings, result: LoadResult, found: list[checks.Check], host: str) -> str:
    calls = len(result.samples)
    lines = [
        f"{settings.clients} concurrent `grpc.aio` clients on loopback for {settings.duration:g} s or {settings.max_requests} requests, "
        f"whichever came first (at most {settings.max_jobs} job submissions), seed {settings.seed}; a fresh server "
        f"(`--sandbox {settings.sandbox} --job-workers {settings.job_workers}`, SQLite state); the host: {host}. {calls} calls in {result.seconds:.1f} s"
        f"{' (the request cap was reached)' if calls >= result.planned else ''}; latency over successful calls, "
        "nearest-rank percentiles; ok / s over the whole load.",
        "", operations_table(result), "", errors_table(result), "", memory_line(result), "", "Checks afterwards:", "",
        *(f"- {'passed' if c.passed else '**FAILED**'}: {c.name} ({c.detail})" for c in found),
    ]
    if unexpected(result):
        lines.append(f"- **FAILED**: unexpected errors: {dict(unexpected(result))}")
    if missing_kinds(result):
        lines.append(f"- **FAILED**: operations that never succeeded: {', '.join(missing_kinds(result))}")
    return "\n".join(lines) + "\n"


def _command(settings: Settings) -> str:
    """The command that regenerates this section alone (the script's default is the full size)."""
    command = ".venv/bin/python proof/load.py"
    if settings == FULL:
        return command
    if settings == FAST:
        return command + " --fast"
    return (f"{command} --clients {settings.clients} --duration {settings.duration:g} --max-requests {settings.max_requests} "
            f"--max-jobs {settings.max_jobs}" + (" --fast" if settings.sandbox == FAST.sandbox else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="start from the fast size `make test` runs (default: the full size)")
    parser.add_argument("--clients", type=int, help="concurrent clients")
    parser.add_argument("--duration", type=float, help="seconds during which clients take new operations")
    parser.add_argument("--max-requests", type=int, help="the cap on total requests")
    parser.add_argument("--max-jobs", type=int, help="the cap on job submissions (each runs a sandbox)")
    parser.add_argument("--out", type=Path, default=FIGURES, help="where the plot goes (default: docs/proof/)")
    args = parser.parse_args(argv)
    settings = FAST if args.fast else FULL
    chosen = {k: v for k, v in (("clients", args.clients), ("duration", args.duration), ("max_requests", args.max_requests),
                                ("max_jobs", args.max_jobs)) if v is not None}
    settings = replace(settings, **chosen)
    if settings.clients < 1 or settings.duration <= 0:
        parser.error("--clients must be at least 1 and --duration positive")
    try:
        plan(seed=settings.seed, max_requests=settings.max_requests, max_jobs=settings.max_jobs)
    except ValueError as error:
        parser.error(str(error))
    workdir = Path(tempfile.mkdtemp(prefix="cleanroom-proof-load-"))
    try:
        section = execute(settings, workdir=workdir, out=args.out).section
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(section.markdown())
    return 0 if section.passed else 1


if __name__ == "__main__":
    sys.exit(main())
