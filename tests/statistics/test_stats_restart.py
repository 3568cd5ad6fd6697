"""Statistics allowances across a real server's end: a clean stop commits exactly what was drawn,
a SIGKILL leaves the allowance to start-up reconciliation, which commits it whole — never less than
the answers that left."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from cleanroom.domain.audit import verify_chain
from cleanroom.domain.privacy import SpendState
from cleanroom.sdk import Client
from cleanroom.statistics.engine import Query
from cleanroom.storage import audit_repo, privacy_repo
from cleanroom.storage.db import Database, default_url
from tests.processes import alive, serve, serve_shared_dataset
from tests.tools import needs

pytestmark = needs("bwrap")  # the server's sandboxes (tests/tools.py)

COUNT = Query(kind="count", epsilon=0.1)
ANSWERS = 5


def _world(tmp_path: Path) -> tuple[Path, Path, str, str]:
    """A bootstrapped state directory with a shared dataset, its server stopped; (state, log, maker token, dataset)."""
    world = serve_shared_dataset(tmp_path, budget=20, share=10, max_epsilon=3, auto_approve=1)
    world.server.send_signal(signal.SIGTERM)
    world.server.wait(timeout=60)
    return world.state, world.log, world.maker.token, world.dataset


def _answer(address: str, token: str, dataset: str) -> list[float]:
    with Client(address, token) as maker:
        return [maker.run_query(dataset, COUNT).epsilon for _ in range(ANSWERS)]


def _statistics_spends(state: Path):
    db = Database(default_url(state))
    try:
        with db.read() as session:
            ids = sorted({e.spend_id for e in privacy_repo.events(session) if e.spend_id})
            spends = [s for s in (privacy_repo.get_spend(session, i) for i in ids) if s is not None and s.kind == "statistics"]
            answers = [e for e in audit_repo.entries(session) if e.action == "stats.answer"]
            chain = verify_chain(audit_repo.entries(session), stored_head=audit_repo.head(session))
        return spends, answers, chain
    finally:
        db.dispose()


@pytest.mark.timeout(600)
def test_a_clean_stop_commits_exactly_what_the_answers_drew(tmp_path: Path) -> None:
    state, log, token, dataset = _world(tmp_path)
    server, address = serve(state, log)
    try:
        spent = _answer(address, token, dataset)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    (spend,), answers, chain = _statistics_spends(state)
    assert spend.state is SpendState.COMMITTED and spend.committed.epsilon_value == pytest.approx(sum(spent))
    assert spend.reserved.epsilon > spend.committed.epsilon  # the rest was refunded
    assert len(answers) == ANSWERS and {a.details["spend"] for a in answers} == {spend.id}
    assert chain.ok


@pytest.mark.timeout(600)
def test_sigkill_with_an_open_allowance_commits_it_whole_at_restart(tmp_path: Path) -> None:
    state, log, token, dataset = _world(tmp_path)
    server, address = serve(state, log)
    try:
        spent = _answer(address, token, dataset)
        sandboxes = [p.pid for p in psutil.Process(server.pid).children(recursive=True)]
        assert sandboxes, "the warm statistics worker should be running"
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        deadline = time.monotonic() + 10
        while alive(sandboxes) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive(sandboxes) == []  # the decrypted dataset died with the server
    finally:
        if server.poll() is None:
            server.kill()
    (before,), _, _ = _statistics_spends(state)
    assert before.state is SpendState.RESERVED and before.decrypted  # what a crash leaves behind

    server, address = serve(state, log)  # start-up reconciliation settles it
    try:
        with Client(address, token) as maker:
            assert maker.run_query(dataset, COUNT).epsilon == pytest.approx(0.1)  # and service goes on
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    spends, answers, chain = _statistics_spends(state)
    crashed = next(s for s in spends if s.id == before.id)
    assert crashed.state is SpendState.COMMITTED and crashed.committed == crashed.reserved  # over-charged, never under
    assert crashed.committed.epsilon_value >= sum(spent) - 1e-9
    assert len([a for a in answers if a.details["spend"] == before.id]) <= ANSWERS  # records may trail; their cost did not
    assert all(s.state is not SpendState.RESERVED for s in spends) and chain.ok
