"""What every atheris harness shares: seeding the corpus, the crash rule, and the canary.

A harness is `python proof/fuzz_targets/<target>.py [libFuzzer flags] CORPUS_DIR` (atheris takes over
the process, so each runs in its own; proof/fuzz.py starts them). Before fuzzing, an empty CORPUS_DIR
gets the target's seeds: small valid inputs generated here, so the fuzzer starts past the first
check. The project's own rejection errors (`expected`) are the answer to bad input; any other
exception is a crash, and so is a hang (libFuzzer's -timeout) or memory past -rss_limit_mb:
libFuzzer then saves the input under -artifact_prefix and exits non-zero.

`--canary` makes the harness raise an exception no target raises after every input: a run with it
must end in a saved crash, which shows the harness catches what it should (tests/proof/test_fuzz.py).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402
from _safe_instrument import SKIPPED, install  # noqa: E402

install()
CANARY_FLAG = "--canary"
# Only the project is instrumented: instrumenting the stdlib parsers (tomllib, json) crashed atheris.
INSTRUMENTED = ["cleanroom"]


class FuzzCanary(Exception):
    """Raised by a harness in --canary mode: never one of a target's expected errors."""


def seed_corpus(directory: Path, seeds: list[bytes]) -> None:
    """Writes the seeds into an empty corpus directory (a directory with inputs is left as it is)."""
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        return
    for seed in seeds:
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


def _corpus_dirs(argv: list[str]) -> list[Path]:
    return [Path(a) for a in argv[1:] if not a.startswith("-") and (Path(a).is_dir() or not Path(a).exists())]


def run(target: Callable[[bytes], None], expected: tuple[type[BaseException], ...], seeds: Callable[[], list[bytes]]) -> None:
    """Fuzz `target` (one input's bytes; may raise `expected`) from `seeds`, as argv says."""
    canary = CANARY_FLAG in sys.argv
    argv = [a for a in sys.argv if a != CANARY_FLAG]
    corpus = _corpus_dirs(argv)
    if corpus and not canary:  # the canary fires on the first input: no seeds needed
        seed_corpus(corpus[0], seeds())

    def one_input(data: bytes) -> None:
        try:
            target(data)
        except expected:
            pass
        if canary:
            raise FuzzCanary("the harness canary: an exception that no target raises")

    print(f"harness: {len(SKIPPED)} code objects left uninstrumented (atheris miscompiled them): "
          + ", ".join(name.rsplit("/", 1)[-1] for name in SKIPPED[:8]), file=sys.stderr, flush=True)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
