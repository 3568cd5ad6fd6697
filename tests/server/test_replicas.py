"""Three real `cleanroom serve` replicas on one database and one state directory (SQLite and
PostgreSQL): a third replica starts, is SIGKILLed and starts again while the other two upload, train
and answer statistics queries. No live work is disturbed (the upload succeeds, the job is RELEASED,
every query answers), the dead replica's open allowance is settled at the restart, and the ledger
replays to the balances (issue 14, item 1)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from cleanroom.cli import samples
from cleanroom.domain.privacy import SpendState, replay
from cleanroom.sdk import Client
from cleanroom.sdk.schema import Schema
from cleanroom.statistics.engine import Query
from cleanroom.storage import privacy_repo
from cleanroom.storage.db import Database
from cleanroom.storage.tables import IdempotencyRow, JobRow, ServerLeaseRow, SpendRow
from cleanroom.v1 import jobs_pb2
from tests.api.test_datasets_api import _rows, _schema, _write_csv
from tests.jobs.test_jobs_restart import EXAMPLE, _training
from tests.processes import cli_argv, serve
from tests.tools import needs

pytestmark = needs("bwrap")  # the servers' sandboxes (tests/tools.py)

LEASE = ("--lease-seconds", "10")  # generous: a loaded machine must not expire a live replica; a killed one on this host loses its lease at once
COUNT = Query(kind="count", epsilon=0.01)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for(what: str, check, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.timeout(900)
def test_a_replica_restarting_disturbs_no_live_work(tmp_path: Path, database_url: str) -> None:
    state, log = tmp_path / "state", tmp_path / "servers.log"
    flags = ("--database-url", database_url, *LEASE)
    admin_token = subprocess.run(cli_argv("admin", "bootstrap", "--state-dir", str(state), "--database-url", database_url),
                                 check=True, capture_output=True, text=True, timeout=120).stdout.strip()
    servers: list[subprocess.Popen[bytes]] = []
    db = Database(database_url)
    try:
        (a, at_a), (b, at_b) = (serve(state, log, *flags, port_name=f"port-{n}") for n in "ab")
        servers += [a, b]
        with Client(at_a, admin_token) as admin:
            owner, maker, officer = (admin.create_principal(f"{role} one", role) for role in ("data_owner", "manufacturer", "privacy_officer"))
        with Client(at_a, owner.token) as hospital:
            dataset = hospital.upload_dataset(samples.write_breast_cancer_csv(tmp_path / "bc.csv"),
                                              Schema(samples.breast_cancer_schema(), 5)).name
        with Client(at_b, officer.token) as office:
            office.set_budget(dataset, epsilon=40, delta=1e-4, reason="total")
            office.share_dataset(dataset, maker.principal.name, epsilon=30, delta=1e-4, reason="pilot")
            office.set_approval_policy(dataset, max_epsilon=3, auto_approve_epsilon=1.5, reason="routine")

        # A training job, running on A or B (C has not started yet).
        with Client(at_a, maker.token) as manufacturer:
            model = manufacturer.submit_model(EXAMPLE).name
            job = manufacturer.train(_training(model, dataset, epochs=300, expected_batch_patients=8))
            _wait_for("the job never ran", lambda: manufacturer.get_job(job.name).state == jobs_pb2.JOB_STATE_RUNNING)

        # Statistics queries on A and B, all along.
        stop_queries, answered, failures = threading.Event(), [0], []

        def ask() -> None:
            with Client(at_a, maker.token) as on_a, Client(at_b, maker.token) as on_b:
                while not stop_queries.is_set():
                    for client in (on_a, on_b):
                        try:
                            client.run_query(dataset, COUNT)
                            answered[0] += 1
                        except Exception as error:  # noqa: BLE001 - collected and asserted on below
                            failures.append(repr(error))
                    stop_queries.wait(1.0)

        # An upload on A held mid-stream until C has started, died and started again.
        mid_stream, hold, upload_result = threading.Event(), threading.Event(), []
        big = _write_csv(tmp_path / "big.csv", _rows(3000, 40))

        def paced(sent: int, _total: int) -> None:
            if sent >= 2 << 20 and not hold.is_set():
                mid_stream.set()
                hold.wait(300)

        def upload() -> None:
            with Client(at_a, owner.token) as hospital:
                try:
                    upload_result.append(hospital.upload_dataset(big, _schema(), request_id="live-upload", progress=paced))
                except Exception as error:  # noqa: BLE001 - asserted on below
                    upload_result.append(error)

        asker, uploader = threading.Thread(target=ask), threading.Thread(target=upload)
        asker.start()
        uploader.start()
        try:
            assert mid_stream.wait(120), "the upload never got under way"

            c, at_c = serve(state, log, *flags, port_name="port-c")  # its start-up recovery runs beside live work
            servers.append(c)
            with Client(at_c, maker.token) as on_c:  # C opens an allowance of its own, then dies with it
                for _ in range(3):
                    on_c.run_query(dataset, COUNT)
            with db.read() as session:
                dead_c = session.scalars(select(ServerLeaseRow.instance_id).where(ServerLeaseRow.pid == c.pid)).one()
            c.send_signal(signal.SIGKILL)
            c.wait(timeout=30)
            c, at_c = serve(state, log, *flags, port_name="port-c")
            servers.append(c)

            with db.read() as session:
                claim = session.scalars(select(IdempotencyRow).where(IdempotencyRow.request_id == "live-upload")).one()
                assert claim.response is None  # A's request claim survived C's two start-ups
                running = session.scalars(select(JobRow.state).where(JobRow.id == job.name.removeprefix("jobs/"))).one()
                assert running == "running", "the job ended before the replica restarted: the test proves nothing"
                dead_spends = session.scalars(select(SpendRow.state).where(SpendRow.owner == dead_c)).all()
            assert dead_spends and set(dead_spends) == {SpendState.COMMITTED.value}  # its allowance, settled whole
            with Client(at_c, maker.token) as on_c:
                on_c.run_query(dataset, COUNT)
        finally:
            hold.set()
            uploader.join(timeout=300)
        with Client(at_b, maker.token) as manufacturer:
            done = manufacturer.wait_job(job.name, timeout=600)
        stop_queries.set()
        asker.join(timeout=120)

        assert [type(r).__name__ for r in upload_result] == ["Dataset"], upload_result
        assert upload_result[0].row_count > 0
        assert done.state == jobs_pb2.JOB_STATE_RELEASED, jobs_pb2.JobFailure.Name(done.failure)
        assert failures == [] and answered[0] > 0
        with Client(at_c, owner.token) as hospital:
            assert len(list(hospital.list_datasets())) == 2
    finally:
        for process in reversed(servers):
            _stop(process)
    with db.read() as session:
        balances, events = privacy_repo.all_balances(session), privacy_repo.events(session)
        assert not privacy_repo.open_spends(session)  # every server stopped cleanly: every allowance closed
    db.dispose()
    assert replay(events) == balances
