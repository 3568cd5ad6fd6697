"""`make proof`: run every part of the proof suite at full size and write PROOF.md.

Parts, in order (each also runs alone: `.venv/bin/python proof/<part>.py --help`):
  mia          membership inference against the (ε, δ) ceilings, and a non-private reference
  audit        the one-run privacy audit: lower bounds on ε, and the broken trainer caught
  fuzz         property-based RPC fuzzing and coverage-guided fuzzing of the parsers
  load         a bounded mixed load on a real server; ledger replay and audit afterwards
  credentials  expiry, revocation on every replica, failed-auth limits, no secret in any output
`--only PART[,PART]` runs some; `--quick` runs the fast sizes `make test` uses.
Exit status 1 if any part failed; PROOF.md is written either way, saying which.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proof.report import FIGURES, Section, today  # noqa: E402

PARTS = ("mia", "audit", "fuzz", "load", "credentials")
INTRO = """# Proof: what the platform's privacy and robustness claims rest on, measured

Every figure below was produced by the command named under its heading, on the date given, on
this project's own machine (2 CPU cores, no GPU) unless it says otherwise. `make proof` regenerates
the whole page; a part that fails its check makes `make proof` exit non-zero.
"""


def run_part(name: str, *, full: bool) -> Section:
    module = importlib.import_module(f"proof.{name}")
    started = time.monotonic()
    try:
        section: Section = module.run(full=full, out=FIGURES)
    except Exception:  # a part that crashes is a failed part, reported, not a lost page
        return Section(title=name, command=f"proof/{name}.py", passed=False,
                       body="The part crashed:\n\n```\n" + traceback.format_exc(limit=8) + "```\n")
    section.body += f"\n*Took {time.monotonic() - started:.0f} s.*\n"
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts (default: all)")
    parser.add_argument("--quick", action="store_true", help="the fast sizes `make test` runs")
    parser.add_argument("--output", type=Path, default=ROOT / "PROOF.md", help="where to write (default: PROOF.md)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s): {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    FIGURES.mkdir(parents=True, exist_ok=True)
    sections = []
    for name in names:
        print(f"proof: {name} ...", flush=True)
        sections.append(run_part(name, full=not args.quick))
        print(f"proof: {name} {'passed' if sections[-1].passed else 'FAILED'}", flush=True)
    summary = "\n".join(f"- {s.title}: {'passed' if s.passed else '**FAILED**'}" for s in sections)
    page = INTRO + f"\nGenerated {today()}.\n\n{summary}\n\n" + "\n".join(s.markdown() for s in sections)
    args.output.write_text(page)
    print(f"proof: wrote {args.output}")
    return 0 if all(s.passed for s in sections) else 1


if __name__ == "__main__":
    sys.exit(main())
