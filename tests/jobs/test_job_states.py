"""The job state machine: allowed paths, idempotent repeats, refused jumps."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cleanroom.domain.errors import CleanroomError
from cleanroom.domain.jobs import ALLOWED, FINAL_STATES, FailureCode, Job, JobKind, JobState, transition

NOW = datetime(2026, 11, 29, tzinfo=UTC)


def _job(state: JobState) -> Job:
    return Job("j1", JobKind.TRAINING, "m", "model", "d", "{}", state, NOW)


@pytest.mark.parametrize("start", list(JobState))
@pytest.mark.parametrize("end", list(JobState))
def test_every_pair_of_states(start: JobState, end: JobState) -> None:
    job = _job(start)
    if start is end:
        assert transition(job, end) is job
    elif end in ALLOWED.get(start, frozenset()):
        moved = transition(job, end, failure=FailureCode.WORKER_FAILED, at=NOW)
        assert moved.state is end
        assert moved.failure is (FailureCode.WORKER_FAILED if end is JobState.FAILED else FailureCode.NONE)
        assert (moved.finished_at is not None) == end.final
    else:
        with pytest.raises(CleanroomError):
            transition(job, end)


def test_final_states_go_nowhere() -> None:
    for state in FINAL_STATES:
        assert state not in ALLOWED
    assert {s for s in JobState if s.final} == FINAL_STATES
