"""Credentials, checked on two replicas: tokens expire and are revoked on every replica at the next
call, failed authentications are limited per source, only admins manage tokens, bad input is
refused with its field, the last admin cannot lock everyone out, and no token or key shows up in
anything the servers said (proof/secrets_scan.py's scan over every response, error, metric and log
line of the run).

    .venv/bin/python proof/credentials.py            # the full size, as `make proof` runs it
    .venv/bin/python proof/credentials.py --quick    # the fast size `make test` runs

Full size: two real `cleanroom serve` processes, 20 revocation rounds, B limited to the default 50
failed authentications per 10 s window, which the run waits out. Fast size: two servers in one
process (each its own app and limiter, on one database; B's limiter on a clock moved instead of
waited), 2 rounds, a limit of 3.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proof import credentials_checks as checks  # noqa: E402
from proof.credentials_checks import Row  # noqa: E402
from proof.credentials_world import World, in_process, processes  # noqa: E402
from proof.report import FIGURES, Section  # noqa: E402

COMMAND = ".venv/bin/python proof/credentials.py"


def _secrets_scan(world: World) -> Row:
    """proof/secrets_scan.py's scan (engineer F's) over everything this run's callers and servers said."""
    try:
        from proof.secrets_scan import Secret, scan, state_secrets
    except ImportError:
        return Row("no secret in any output", "hook: proof/secrets_scan.py is not there", "not run", False)
    texts = {**world.texts, "server log": world.logs(), "B's /metrics (last)": world.metrics_b()}
    secrets = [Secret(f"token {n}", token.encode(), token=True) for n, token in enumerate(world.tokens)] + state_secrets(world.state)
    findings = scan(texts, secrets)
    size = sum(len(t) for t in texts.values())
    found = "; ".join(f"{f.secret} in {f.text} ({f.encoding})" for f in findings[:5])
    return Row("no secret in any output", f"every response, error, metric and log line of this run ({len(texts)} texts, {size:,} "
               f"characters) searched for {len(world.tokens)} tokens (revoked and expired ones too) and the state directory's keys, "
               "raw and encoded", f"{len(findings)} found" + (f": {found}" if found else ""), not findings)


def all_checks(world: World, *, rounds: int, cost_calls: int) -> list[Row]:
    clear = world.advance  # B's failures must leave its window before the next check counts its own
    steps: list[tuple[Callable[[], Row], bool]] = [
        (lambda: checks.rate_limit(world), True),  # first: B has seen no failure yet
        (lambda: checks.issue_and_use(world), False),
        (lambda: checks.revocation(world, rounds), True),
        (lambda: checks.expiry(world), True),
        (lambda: checks.lock_out(world), False),
        (lambda: checks.roles(world), False),
        (lambda: checks.bad_input(world), False),
        (lambda: checks.metrics(world), False),
        (lambda: checks.check_cost(world, cost_calls), False),
    ]
    rows = []
    for step, fails_on_b in steps:
        rows.append(step())
        if fails_on_b:
            clear(world.window)
    rows.append(_secrets_scan(world))
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| check | what was done | result |", "|---|---|---|"]
    lines += [f"| {r.check} | {r.done} | {'' if r.passed else '**FAILED**: '}{r.result} |" for r in rows]
    return "\n".join(lines)


def run(*, full: bool, out: Path) -> Section:
    with tempfile.TemporaryDirectory(prefix="cleanroom-credentials-") as work:
        world = processes(Path(work), limit=50, window=10.0) if full else in_process(Path(work), limit=3, window=60.0)
        try:
            rows = all_checks(world, rounds=20 if full else 2, cost_calls=2000 if full else 100)
        finally:
            world.stop()
    body = (f"Against {world.kind}: A with the default failed-authentication limit, B with {world.limit} per "
            f"{world.window:g} s. Every check runs through the public API (the SDK; the CLI's commands are the same calls).\n\n"
            + table(rows) + "\n\nThe limit is per replica and per source address (the port is ignored); calls without a token "
            "are not attempts and are not counted. Checking every call against the database replaced a 30 s cache, which "
            "let a revoked token work for up to 30 s on a replica that had seen it.\n")
    return Section(title="Credentials: expiry, revocation on every replica, failed-authentication limits, no secret in any output",
                   command=COMMAND + ("" if full else " --quick"), body=body, passed=all(r.passed for r in rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the fast size `make test` runs (in-process replicas)")
    args = parser.parse_args(argv)
    section = run(full=not args.quick, out=FIGURES)
    print(section.markdown())
    return 0 if section.passed else 1


if __name__ == "__main__":
    sys.exit(main())
