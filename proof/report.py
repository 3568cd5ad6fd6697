"""What every part of the proof suite hands to PROOF.md: one dated section, the command that
reproduces it, whether it passed, and the figures it drew.

Each part is a module `proof/<part>.py` with `run(*, full: bool, out: Path) -> Section` (`full`
is `make proof`'s size; the fast size is what its test in `make test` runs) and a `main()` for
running it alone. `proof/run.py` runs them all and writes PROOF.md.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "proof"   # committed next to PROOF.md, which links them


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass
class Section:
    title: str
    command: str            # the shell command that regenerates this section alone
    body: str               # Markdown: tables and plain words, no raw dumps
    passed: bool            # False fails `make proof`
    figures: list[Path] = field(default_factory=list)
    date: str = field(default_factory=today)

    def markdown(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        head = f"## {self.title}\n\n*{self.date}; `{self.command}`; {verdict}.*\n\n"
        pictures = "".join(f"\n![{p.stem}]({_link(p)})\n" for p in self.figures)
        return head + self.body.rstrip() + "\n" + pictures


def _link(figure: Path) -> str:
    """PROOF.md links a figure by its path in the repository; one drawn elsewhere (a part's --out) by its own."""
    resolved = figure.resolve()
    return resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else str(figure)
