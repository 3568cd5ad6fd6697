"""The two replicas the credentials proof runs against, and everything they and their callers said.

`processes(work, ...)`: two real `cleanroom serve` processes on one state directory (one SQLite
database, as replicas share it), metrics on, the first admin made by `cleanroom admin bootstrap`.
`in_process(work, ...)`: two servers in this process, each its own App (its own token checks and
failed-authentication limiter) on one database, B's limiter on a clock the proof moves, so the
fast size neither sleeps nor pays two interpreter start-ups. Both serve gRPC on real ports.
"""

from __future__ import annotations

import io
import logging
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class World:
    kind: str                      # in words, for the report
    a: str                         # replica A's address (default limits)
    b: str                         # replica B's address (a small failed-authentication limit)
    admin_token: str
    limit: int                     # B's failed-authentication limit and window
    window: float
    state: Path
    metrics_b: Callable[[], str]   # B's /metrics text
    logs: Callable[[], str]        # every server log line so far
    advance: Callable[[float], None]  # let B's window pass: move its clock, or wait
    stop: Callable[[], None]
    texts: dict[str, str] = field(default_factory=dict)   # every response and error a caller saw (scanned for secrets)
    tokens: list[str] = field(default_factory=list)       # every bearer token issued (secrets to look for)

    def said(self, label: str, text: object) -> None:
        self.texts[f"{len(self.texts):03d} {label}"] = str(text)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "cleanroom.cli.main", *args]


def _serve(state: Path, log: Path, name: str, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port_file = state.parent / f"port-{name}"
    with log.open("ab") as out:
        process = subprocess.Popen(_argv("serve", "--state-dir", str(state), "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                                         *extra), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    for _ in range(1200):  # a bound by count: 0.1 s each, two minutes for a loaded machine
        if port_file.exists():
            return process, f"127.0.0.1:{port_file.read_text().strip()}"
        if process.poll() is not None:
            raise RuntimeError(f"replica {name} did not start: see {log}")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"replica {name} did not start in time")


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def processes(work: Path, *, limit: int, window: float) -> World:
    state, log = work / "state", work / "servers.log"
    admin = subprocess.run(_argv("admin", "bootstrap", "--state-dir", str(state)), capture_output=True, text=True, timeout=300,
                           check=True, cwd=ROOT).stdout.strip()
    metrics_port = _free_port()
    started: list[subprocess.Popen[bytes]] = []
    try:
        a, at_a = _serve(state, log, "a", "--metrics-listen", "")
        started.append(a)
        b, at_b = _serve(state, log, "b", "--metrics-listen", f"127.0.0.1:{metrics_port}", "--auth-failure-limit", str(limit),
                         "--auth-failure-window", str(window))
        started.append(b)
    except BaseException:
        _stop(started)
        raise

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as response:
            return str(response.read().decode())

    return World("two `cleanroom serve` processes on one state directory (SQLite)", at_a, at_b, admin, limit, window, state,
                 scrape, log.read_text, time.sleep, lambda: _stop(started), tokens=[admin])


class _Ticks:
    def __init__(self) -> None:
        self.at = 0.0

    def __call__(self) -> float:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += seconds


def in_process(work: Path, *, limit: int, window: float) -> World:
    from prometheus_client import generate_latest

    from cleanroom.api.server import Server
    from cleanroom.domain.identity import Role
    from cleanroom.server.app import build_app
    from cleanroom.server.config import ServerConfig
    from cleanroom.storage.db import default_url

    state = work / "state"
    log, handler = _captured_log()
    ticks = _Ticks()
    servers: list[Any] = []
    for name in ("a", "b"):
        config = ServerConfig(state_dir=state, listen="127.0.0.1:0", database_url=default_url(state), workers=8, grace_seconds=1.0,
                              auth_failure_limit=limit if name == "b" else 50, auth_failure_window=window)
        server = Server(build_app(config), auth_clock=ticks if name == "b" else time.monotonic)
        server.start()
        servers.append(server)
    _, admin = servers[0].app.principals.create("admin", Role.ADMIN, actor="local-bootstrap")

    def stop() -> None:
        for server in servers:
            server.stop(grace=0)
        logging.getLogger().removeHandler(handler)

    return World("two servers in one process, each its own app, on one state directory (SQLite)",
                 f"127.0.0.1:{servers[0].port}", f"127.0.0.1:{servers[1].port}", admin, limit, window, state,
                 lambda: generate_latest(servers[1].app.metrics.registry).decode(), log.getvalue, ticks.advance, stop, tokens=[admin])


def _captured_log() -> tuple[io.StringIO, logging.Handler]:
    """The in-process servers' log lines, formatted as the service formats them."""
    from cleanroom.observability import logs

    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return text, handler
