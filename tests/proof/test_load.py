"""proof/load.py at its fast size: a real server under a bounded mixed load of every operation kind,
then the books checked; and the checks shown able to fail (a tampered copy of the database, an
answer the audit log does not hold)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from proof import load
from proof.load_checks import answers_audited, audit_counts, database_url, jobs_audited, ledger_replays
from proof.load_gen import JOBS, WEIGHTS, LoadResult, Sample, plan
from tests.tools import needs


def test_the_plan_opens_with_every_kind_and_caps_jobs() -> None:
    operations = plan(seed=3, max_requests=500, max_jobs=4)
    assert len(operations) == 500 and operations[:2] == list(JOBS)
    assert set(operations[:len(WEIGHTS)]) == set(WEIGHTS)
    assert sum(op in JOBS for op in operations) == 4
    assert operations == plan(seed=3, max_requests=500, max_jobs=4)  # seeded
    with pytest.raises(ValueError, match="every kind once"):
        plan(seed=3, max_requests=len(WEIGHTS) - 1, max_jobs=4)


def test_an_unexpected_status_or_a_kind_that_never_succeeded_fails_the_section() -> None:
    every = [Sample(kind, 0.0, 0.01, "OK") for kind in WEIGHTS]
    refused = Sample("query", 0.0, 0.01, "RESOURCE_EXHAUSTED/PRIVACY_BUDGET_EXHAUSTED")
    assert load.passed(LoadResult([*every, refused], 1.0, 13, 1), [])
    assert not load.passed(LoadResult([*every, Sample("query", 0.0, 0.01, "INTERNAL")], 1.0, 13, 1), [])
    assert not load.passed(LoadResult([*every, Sample("upload", 0.0, 0.01, "RESOURCE_EXHAUSTED/AUTH_RATE_LIMITED")], 1.0, 13, 1), [])
    assert not load.passed(LoadResult(every[1:], 1.0, 13, 1), [])
    assert "**unexpected**" in load.errors_table(LoadResult([Sample("whoami", 0.0, 0.01, "UNAVAILABLE")], 1.0, 1, 0))


def _tampered_copy(database: Path, copy: Path) -> Path:
    """A consistent copy (SQLite's backup API: the WAL included) with one budget's spend raised by 1 ε."""
    with sqlite3.connect(database) as source, sqlite3.connect(copy) as target:
        source.backup(target)
        changed = target.execute("UPDATE budgets SET spent_epsilon = spent_epsilon + 1000000 "
                                 "WHERE id = (SELECT id FROM budgets ORDER BY id LIMIT 1)").rowcount
    assert changed == 1
    return copy


@needs("bwrap")
@pytest.mark.timeout(600)
def test_fast_load_passes_every_check_and_the_checks_can_fail(tmp_path: Path) -> None:
    outcome = load.execute(load.FAST, workdir=tmp_path, out=tmp_path / "figures")
    result = outcome.result
    assert outcome.section.passed, outcome.section.body
    assert {s.kind for s in result.samples} == set(WEIGHTS)
    assert load.missing_kinds(result) == [] and not load.unexpected(result)
    assert len(result.samples) <= load.FAST.max_requests and sum(s.kind in JOBS for s in result.samples) <= load.FAST.max_jobs
    assert result.answers > 0 and result.jobs and len(result.rss) >= 2
    assert all(c.passed for c in outcome.checks) and len(outcome.checks) == 7
    assert (tmp_path / "figures" / load.FIGURE).stat().st_size > 10_000

    url = database_url(tmp_path / "state")
    assert ledger_replays(url).passed
    broken = ledger_replays(f"sqlite:///{_tampered_copy(tmp_path / 'state' / 'cleanroom.db', tmp_path / 'tampered.db')}")
    assert not broken.passed and "1 of" in broken.detail, broken.detail

    audited, released = audit_counts(url)
    assert answers_audited(result.answers, audited).passed
    assert not answers_audited(result.answers + 1, audited).passed  # an answer with no entry
    assert not jobs_audited(result.jobs, released - {sorted(released)[0]}).passed  # a release with no entry
