"""A real server process SIGKILLed while a training job runs, then started again on the same state.

The worker sandbox must die with the server (bubblewrap's --die-with-parent, the sandbox being the
server's direct child), the restarted server must fail the job with SERVER_RESTARTED, settle its
reservation per the ledger rules exactly once (the key had left the broker: committed as spent),
and run the next job to RELEASED.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from cleanroom.cli import samples
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.storage import job_repo, privacy_repo
from cleanroom.storage.db import Database, default_url
from cleanroom.v1 import jobs_pb2
from tests.paths import REPO_ROOT
from tests.processes import alive, serve_shared_dataset
from tests.processes import serve as _serve
from tests.tools import needs

pytestmark = needs("bwrap")  # the server's sandboxes (tests/tools.py)

EXAMPLE = REPO_ROOT / "examples" / "breast-cancer-mlp"
FEATURES = samples.feature_names()


def _tree(pid: int) -> dict[int, str]:
    try:
        return {p.pid: " ".join(p.cmdline()) for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return {}


def _training(model: str, dataset: str, **changes) -> jobs_pb2.TrainingSpec:
    values = dict(model=model, dataset=dataset, feature_columns=FEATURES, label_column="malignant", target_epsilon=0.5,
                  target_delta=1e-5, epochs=4, expected_batch_patients=64, learning_rate=0.1, optimizer="sgd",
                  clipping_norm=1.0, validation_fraction=0.2)
    return jobs_pb2.TrainingSpec(**{**values, **changes})


@pytest.mark.timeout(900)
def test_sigkill_while_a_job_runs_then_restart(tmp_path: Path) -> None:
    world = serve_shared_dataset(tmp_path, budget=6, share=5, max_epsilon=3, auto_approve=1.5)
    state, log, server, address = world.state, world.log, world.server, world.address
    maker, officer, dataset = world.maker, world.officer, world.dataset
    try:
        with Client(address, maker.token) as manufacturer:
            model = manufacturer.submit_model(EXAMPLE).name
            # About a minute of training: the server is killed long before it could finish.
            job = manufacturer.train(_training(model, dataset, epochs=1000, expected_batch_patients=8))
            deadline, tree = time.monotonic() + 180, {}
            while not any("cleanroom.worker" in cmd for cmd in tree.values()):
                assert time.monotonic() < deadline, "the worker sandbox never started"
                assert manufacturer.get_job(job.name).state in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING)
                tree.update(_tree(server.pid))
                time.sleep(0.05)
            time.sleep(1.0)
            tree.update(_tree(server.pid))
            assert manufacturer.get_job(job.name).state == jobs_pb2.JOB_STATE_RUNNING
        assert any(cmd.split()[0].endswith("bwrap") for cmd in tree.values()), tree

        job_id = job.name.removeprefix("jobs/")
        scratch = Path(tempfile.gettempdir()) / "cleanroom-work"  # the server's default --work-dir
        assert list(scratch.glob(f"{job_id}-*")), "the job's scratch folder (dataset copy, job.json, model) should exist"
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        settle = time.monotonic() + 10
        while alive(set(tree)) and time.monotonic() < settle:
            time.sleep(0.05)
        assert not alive(set(tree)), f"sandbox processes outlived the server: {alive(set(tree))}"

        assert list(scratch.glob(f"{job_id}-*")), "a SIGKILLed server leaves its job's scratch behind"
        server, address = _serve(state, log)
        with Client(address, maker.token) as manufacturer:
            after = manufacturer.get_job(job.name)
            assert after.state == jobs_pb2.JOB_STATE_FAILED
            assert after.failure == jobs_pb2.JOB_FAILURE_SERVER_RESTARTED
            assert not list(scratch.glob(f"{job_id}-*")), "the dead server's job scratch is cleaned at restart (issue 14, item 9)"
            with pytest.raises(CleanroomClientError):
                manufacturer.download(job.name, "weights.safetensors")
            db = Database(default_url(state))
            try:
                with db.read() as session:
                    spend_id = job_repo.get_job(session, job_id).spend_id
                    spend = privacy_repo.get_spend(session, spend_id)
                    events = [e for e in privacy_repo.events(session) if e.spend_id == spend_id]
            finally:
                db.dispose()
            assert spend.decrypted and spend.state.value == "committed"
            assert [e.kind.value for e in events] == ["reserve", "commit"] and events[1].amount == spend.reserved
            with Client(address, officer.token) as office:
                share = [b for b in office.get_budgets(dataset).budgets if b.manufacturer == maker.principal.name]
            assert share and abs(share[0].spent.epsilon - 0.5) < 1e-9 and share[0].reserved.epsilon == 0

            fresh = manufacturer.train(_training(model, dataset))
            done = manufacturer.wait_job(fresh.name, timeout=600)
            assert done.state == jobs_pb2.JOB_STATE_RELEASED, jobs_pb2.JobFailure.Name(done.failure)
            released = manufacturer.download_all(done)
            assert "weights.safetensors" in released

        # A clean restart settles nothing twice and keeps what was released downloadable.
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        server, address = _serve(state, log)
        with Client(address, maker.token) as manufacturer:
            assert manufacturer.download_all(manufacturer.get_job(fresh.name)) == released
        db = Database(default_url(state))
        try:
            with db.read() as session:
                assert [e.kind.value for e in privacy_repo.events(session) if e.spend_id == spend_id] == ["reserve", "commit"]
        finally:
            db.dispose()
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(server.pid, signal.SIGKILL)
