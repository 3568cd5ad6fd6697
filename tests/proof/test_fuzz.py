"""The atheris harnesses (proof/fuzz_targets/) at `make test`'s size: each runs a fixed count of
inputs from its seed corpus without a crash, and each saves the input that crashes it (the
harness canary, an exception no target raises), so a crash cannot go unnoticed. Longer runs:
`make fuzz`; the crashes fuzzing found are regression tests next to their modules (proof/fuzz.py
FINDINGS)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from proof.fuzz import FAST_RUNS, FINDINGS, ROOT
from proof.fuzz_targets.runner import COUNT_CAP_SECONDS, TARGETS, TargetResult, run_target

PARALLEL = 2  # each harness is its own process: two at a time


def _run_all(tmp_path: Path, **kwargs: object) -> dict[str, TargetResult]:
    def one(target: str) -> TargetResult:
        runs = FAST_RUNS[target] if not kwargs else 5
        return run_target(target, tmp_path / target, runs=runs, **kwargs)  # type: ignore[arg-type]

    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip(TARGETS, pool.map(one, TARGETS)))


def test_every_harness_runs_its_count_of_inputs_without_a_crash(tmp_path: Path) -> None:
    results = _run_all(tmp_path)
    for target, result in results.items():
        assert result.ok, f"{target}: {result.problem or [p.name for p in result.crashes]}\n{result.tail}"
        # the wall-clock cap beside the count ends a run early only on a machine far slower than any seen
        capped = result.seconds >= COUNT_CAP_SECONDS
        assert result.executions >= FAST_RUNS[target] or capped, f"{target} ran {result.executions} inputs\n{result.tail}"
        assert result.coverage > 0 and result.corpus > 0, f"{target}: no coverage reported (instrumentation off?)\n{result.tail}"


def test_every_harness_saves_the_input_that_crashes_it(tmp_path: Path) -> None:
    results = _run_all(tmp_path, canary=True)
    for target, result in results.items():
        assert not result.ok and result.crashes, f"{target} did not report its canary\n{result.tail}"
        assert "FuzzCanary" in result.tail, result.tail
        assert result.crashes[0].parent == tmp_path / target / target / "crashes"


def test_every_crash_found_has_its_regression_test() -> None:
    for finding in FINDINGS:
        assert finding.where in TARGETS or finding.where.startswith("rpc ")
        assert (ROOT / finding.test).is_file(), finding.test


# The loop of readers._read_header, whose backward jump atheris 2.3.0 lands one instruction late on
# Python 3.11 (the harness then died of SIGSEGV): the guard must notice and keep the original code.
MISCOMPILED = '''
def read_header(fileobj, read_size):
    pending = b""
    while True:
        end = pending.find(b"\\n")
        if end >= 0:
            line, pending = pending[: end + 1], pending[end + 1 :]
            if not line:
                continue
            return line, pending
        if len(pending) > 16 << 20:
            raise ValueError()
        data = fileobj.read(read_size)
        if not data:
            return pending, b""
        pending += data
'''


def test_the_instrumentation_guard_keeps_what_atheris_would_miscompile() -> None:
    from proof.fuzz_targets import _safe_instrument as guard

    namespace: dict[str, object] = {}
    exec(compile(MISCOMPILED, "probe", "exec"), namespace)  # noqa: S102 - our own constant source
    code = namespace["read_header"].__code__  # type: ignore[attr-defined]
    assert not guard.jumps_preserved(code, guard._original_patch_code(code, True))
    assert guard.checked_patch_code(code, True) is code
    simple = compile("def f(x):\n    return x + 1\n", "probe", "exec").co_consts[0]
    assert guard.checked_patch_code(simple, True) is not simple  # what atheris gets right stays instrumented
