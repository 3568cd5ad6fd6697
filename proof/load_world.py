"""The load run's world: a fresh state directory, a real `cleanroom serve` on loopback, and its
people and data set up through the SDK as a deployment would do it.

An admin (bootstrapped locally), a hospital data team, its privacy officer and two manufacturers.
The hospital uploads two copies of the Wisconsin breast-cancer table (different synthetic
identifiers); the officer sets generous budgets, shares both with both manufacturers and sets a
policy that auto-approves small requests. One share is deliberately small (SMALL_SHARE), so the
load also meets budget refusals (RESOURCE_EXHAUSTED) and the ledger has refusals to account for.
The first manufacturer submits the example model package for the load's jobs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cleanroom.cli import samples
from cleanroom.sdk import Client
from cleanroom.sdk.schema import Schema

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_MODEL = ROOT / "examples" / "breast-cancer-mlp"
DATASET_CAP, SHARE, SMALL_SHARE, DELTA_CAP = 1000.0, 400.0, 0.3, 1e-3
MAX_EPSILON, AUTO_APPROVE = 5.0, 1.0
UPLOAD_FILES = 3  # distinct small tables the load's uploads cycle through (569 patients each, ~130 kB)


@dataclass
class World:
    state: Path
    log: Path
    server: subprocess.Popen[bytes]
    address: str
    tokens: dict[str, str]            # "owner", "officer", "maker0", "maker1" -> bearer token
    datasets: list[str]               # shared with both manufacturers
    model: str                        # maker0's model version
    uploads: list[Path] = field(default_factory=list)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cleanroom.cli.main", *args]


def serve(state: Path, log: Path, *, sandbox: str, job_workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """`cleanroom serve` on a free loopback port, its output to a file (a pipe nobody reads could block it)."""
    port_file = state.parent / "port"
    port_file.unlink(missing_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(_cli("serve", "--state-dir", str(state), "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                                        "--metrics-listen", "", "--sandbox", sandbox, "--job-workers", str(job_workers)), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not start (exit {process.poll()}); see {log}")
        time.sleep(0.05)
    return process, f"127.0.0.1:{port_file.read_text().strip()}"


def stop(server: subprocess.Popen[bytes]) -> int:
    """A graceful stop (SIGTERM: in-flight calls finish, allowances settle); its exit status."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            return -9
    return server.returncode


def build(workdir: Path, *, sandbox: str, job_workers: int) -> World:
    """Bootstrap, serve and set up; the server is killed here if the set-up fails."""
    state, log = workdir / "state", workdir / "server.log"
    admin_token = subprocess.run(_cli("admin", "bootstrap", "--state-dir", str(state)), check=True, capture_output=True,
                                 text=True, timeout=300).stdout.strip()
    server, address = serve(state, log, sandbox=sandbox, job_workers=job_workers)
    try:
        return _populate(workdir, state, log, server, address, admin_token)
    except BaseException:
        server.kill()
        server.wait()
        raise


def _populate(workdir: Path, state: Path, log: Path, server: subprocess.Popen[bytes], address: str, admin_token: str) -> World:
    with Client(address, admin_token) as admin:
        people = {key: admin.create_principal(f"load {key}", role) for key, role in
                  (("owner", "data_owner"), ("officer", "privacy_officer"), ("maker0", "manufacturer"), ("maker1", "manufacturer"))}
    tokens = {key: p.token for key, p in people.items()}
    # Model intake (phase A in a sandbox) is the slow part of the set-up: it runs beside the uploads.
    model: list[str] = []
    intake = threading.Thread(target=lambda: model.append(_submit_model(address, tokens["maker0"])), daemon=True)
    intake.start()
    uploads = [samples.write_breast_cancer_csv(workdir / f"upload-{i}.csv", seed=100 + i) for i in range(UPLOAD_FILES)]
    schema = Schema(samples.breast_cancer_schema(), 5)
    with Client(address, tokens["owner"]) as owner:
        datasets = [owner.upload_dataset(uploads[i], schema, display_name=f"load-shared-{i}").name for i in range(2)]
    makers = [people["maker0"].principal.name, people["maker1"].principal.name]
    with Client(address, tokens["officer"]) as officer:
        for number, dataset in enumerate(datasets):
            officer.set_budget(dataset, epsilon=DATASET_CAP, delta=DELTA_CAP, reason="load test")
            for maker in makers:
                small = number == 1 and maker == makers[1]
                officer.share_dataset(dataset, maker, epsilon=SMALL_SHARE if small else SHARE, delta=DELTA_CAP, reason="load test")
            officer.set_approval_policy(dataset, max_epsilon=MAX_EPSILON, auto_approve_epsilon=AUTO_APPROVE, reason="load test")
    intake.join(timeout=600)
    if not model:
        raise RuntimeError("the model intake did not finish; see the server log")
    return World(state, log, server, address, tokens, datasets, model[0], uploads)


def _submit_model(address: str, token: str) -> str:
    with Client(address, token) as maker:
        return str(maker.submit_model(EXAMPLE_MODEL).name)
