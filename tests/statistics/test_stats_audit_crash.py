"""Audit before release, across a real server's SIGKILL: an answer leaves only once its audit entry is
durable, so after a crash during a many-thread statistics burst every answer a client received is in
the audit log, and the log verifies (the VerifyAuditLog RPC, after restart)."""

from __future__ import annotations

import itertools
import os
import signal
import threading
from pathlib import Path

import pytest

from cleanroom.domain.privacy import EPSILON_SCALE
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.statistics.engine import Query
from cleanroom.storage import audit_repo
from cleanroom.storage.db import Database, default_url
from tests.processes import serve, serve_shared_dataset
from tests.tools import needs

pytestmark = needs("bwrap")  # the server's sandboxes (tests/tools.py)

THREADS = 16
KILL_AFTER = 160          # answers received before the SIGKILL
BASE_MICRO_EPSILON = 10_000  # 0.01 ε; each answer's ε is BASE + its number, so an answer names its audit entry


def _audited_micro_epsilons(state: Path) -> list[int]:
    db = Database(default_url(state))
    try:
        with db.read() as session:
            return [round(e.details["epsilon"] * EPSILON_SCALE) for e in audit_repo.entries(session) if e.action == "stats.answer"]
    finally:
        db.dispose()


@pytest.mark.timeout(600)
def test_every_answer_a_client_received_before_a_sigkill_is_in_the_audit_log(tmp_path: Path) -> None:
    world = serve_shared_dataset(tmp_path, budget=40, share=30, max_epsilon=3, auto_approve=1)
    server = world.server
    received: list[int] = []  # micro-ε of each answer a client got
    lock, enough, numbers = threading.Lock(), threading.Event(), itertools.count()

    def burst() -> None:
        with Client(world.address, world.maker.token) as maker:
            while True:
                micro = BASE_MICRO_EPSILON + next(numbers)
                try:
                    answer = maker.run_query(world.dataset, Query(kind="count", epsilon=micro / EPSILON_SCALE))
                except CleanroomClientError:
                    return  # the server is gone
                with lock:
                    received.append(round(answer.epsilon * EPSILON_SCALE))
                    if len(received) >= KILL_AFTER:
                        enough.set()

    threads = [threading.Thread(target=burst, daemon=True) for _ in range(THREADS)]
    try:
        with Client(world.address, world.maker.token) as maker:  # the worker warm, the allowance open
            maker.run_query(world.dataset, Query(kind="count", epsilon=0.5))
        for thread in threads:
            thread.start()
        assert enough.wait(timeout=300), "the burst did not get going"
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        for thread in threads:
            thread.join(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    with lock:
        answers = list(received)
    assert len(answers) >= KILL_AFTER and len(set(answers)) == len(answers)

    server, address = serve(world.state, world.log)  # start-up reconciliation, then the log as an auditor sees it
    try:
        with Client(address, world.officer.token) as officer:
            verdict = officer.verify_audit_log()
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    audited = set(_audited_micro_epsilons(world.state))
    unaudited = [a for a in answers if a not in audited]
    assert unaudited == [], f"{len(unaudited)} of {len(answers)} answers a client received have no audit entry"
    assert verdict.ok, verdict
