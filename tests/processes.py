"""Real server processes for restart tests, and which processes are still alive (for tests that
check a sandbox left nothing behind)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from cleanroom.cli import samples
from cleanroom.sdk import Client
from cleanroom.sdk.schema import Schema


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "cleanroom.cli.main", *args]


def serve(state: Path, log: Path, *extra: str, port_name: str = "port") -> tuple[subprocess.Popen[bytes], str]:
    """`cleanroom serve` on a free port; (the process, its address) once it is serving. `extra`:
    more flags; `port_name`: its port file's name (replicas on one state directory need one each)."""
    port_file = state.parent / port_name
    port_file.unlink(missing_ok=True)
    with log.open("ab") as out:  # a file, not a pipe nobody reads: a chatty server must never block
        process = subprocess.Popen(cli_argv("serve", "--state-dir", str(state), "--listen", "127.0.0.1:0", "--port-file",
                                            str(port_file), "--metrics-listen", "", *extra), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    return process, f"127.0.0.1:{port_file.read_text().strip()}"


@dataclass
class SharedDataset:
    """A bootstrapped state directory, its running server and the breast-cancer data shared with a maker."""

    state: Path
    log: Path
    server: subprocess.Popen[bytes]
    address: str
    maker: Any      # the SDK's created principal: .principal and .token
    officer: Any
    dataset: str


def serve_shared_dataset(tmp_path: Path, *, budget: float, share: float, max_epsilon: float, auto_approve: float) -> SharedDataset:
    """Bootstrap, serve, create a hospital, a maker and an officer, upload and share; the server is
    left running (the caller stops it), and is killed here if the set-up fails."""
    state, log = tmp_path / "state", tmp_path / "server.log"
    admin_token = subprocess.run(cli_argv("admin", "bootstrap", "--state-dir", str(state)), check=True, capture_output=True,
                                 text=True, timeout=120).stdout.strip()
    server, address = serve(state, log)
    try:
        with Client(address, admin_token) as admin:
            owner, maker, officer = (admin.create_principal(f"{role} one", role) for role in ("data_owner", "manufacturer", "privacy_officer"))
        with Client(address, owner.token) as hospital:
            dataset = hospital.upload_dataset(samples.write_breast_cancer_csv(tmp_path / "bc.csv"),
                                              Schema(samples.breast_cancer_schema(), 5)).name
        with Client(address, officer.token) as office:
            office.set_budget(dataset, epsilon=budget, delta=1e-4, reason="total")
            office.share_dataset(dataset, maker.principal.name, epsilon=share, delta=1e-4, reason="pilot")
            office.set_approval_policy(dataset, max_epsilon=max_epsilon, auto_approve_epsilon=auto_approve, reason="routine")
    except BaseException:
        server.kill()
        server.wait()
        raise
    return SharedDataset(state, log, server, address, maker, officer, dataset)


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def alive(pids: Iterable[int]) -> list[str]:
    """The command lines of those of `pids` still running."""
    left = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(process.cmdline()))
        except psutil.NoSuchProcess:
            pass
    return left
