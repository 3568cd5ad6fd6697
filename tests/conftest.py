"""Shared fixtures: database backends (SQLite and a real PostgreSQL), a real gRPC server on port 0."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy

from cleanroom.api.server import Server
from cleanroom.domain.identity import Role
from cleanroom.sdk import Client
from cleanroom.server.app import App, build_app
from cleanroom.server.config import ServerConfig
from cleanroom.storage.db import default_url
from tests import tools

POSTGRES_ENV = "CLEANROOM_TEST_POSTGRES_URL"
_NOT_TESTED = pytest.StashKey[list[str]]()  # the tools whose tests were skipped by an opt-out


# --- no silent skips: a missing tool fails the test unless the run opted out of it (tests/tools.py)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(*tools): system tools the test needs (tests/tools.py)")
    config.stash[_NOT_TESTED] = []


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("needs"):
        for tool in marker.args:
            tools.check_present(tool)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if reason.removeprefix("Skipped: ").startswith(tools.OPTED_OUT):
            item.config.stash[_NOT_TESTED].append(reason.split(tools.OPTED_OUT, 1)[1].split()[0])
        else:  # only an explicit opt-out may skip
            report.outcome = "failed"
            report.longrepr = f"skipped without an opt-out ({reason}); a test must fail when what it needs is missing"
    return report


def pytest_unconfigure(config: pytest.Config) -> None:
    not_tested = config.stash.get(_NOT_TESTED, [])
    if not_tested:
        counts = ", ".join(f"{tool} ({not_tested.count(tool)} tests)" for tool in sorted(set(not_tested)))
        print(f"\nNOT TESTED, opted out through {tools.OPT_OUT_ENV}: {counts}")



def _postgres_admin_url() -> str:
    tools.check_present("postgresql")
    return os.environ[POSTGRES_ENV]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    admin_url = _postgres_admin_url()
    name = "t_" + uuid.uuid4().hex[:12]
    admin = sqlalchemy.create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    base, _, query = admin_url.partition("?")
    yield f"{base.rsplit('/', 1)[0]}/{name}?{query}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return default_url(tmp_path)
    return request.getfixturevalue("postgres_url")


def make_config(state_dir: Path, **overrides: object) -> ServerConfig:
    values: dict[str, object] = {
        "state_dir": state_dir,
        "listen": "127.0.0.1:0",
        "database_url": default_url(state_dir),
        "workers": 8,
        "grace_seconds": 2.0,
    }
    values.update(overrides)
    return ServerConfig(**values)  # type: ignore[arg-type]


@dataclass
class Running:
    app: App
    server: Server
    address: str
    admin_token: str

    def client(self, token: str | None = None) -> Client:
        return Client(self.address, token)

    def principal(self, role: Role, name: str | None = None) -> tuple[str, str]:
        """Creates a principal directly; returns (id, token)."""
        principal, token = self.app.principals.create(name or f"{role.value} {uuid.uuid4().hex[:6]}", role, actor="test")
        return principal.id, token


def start_server(config: ServerConfig) -> Running:
    app = build_app(config)
    server = Server(app)
    server.start()
    _, admin_token = app.principals.create("first admin", Role.ADMIN, actor="test")
    return Running(app, server, f"127.0.0.1:{server.port}", admin_token)


def internal_calls(app: App) -> dict[str, float]:
    """The calls `cleanroom_rpc_requests_total` counts as INTERNAL (what the INTERNAL-rate alert
    watches), by method: scraped from the server's own registry."""
    return {sample.labels["method"]: sample.value
            for metric in app.metrics.registry.collect() if metric.name == "cleanroom_rpc_requests"
            for sample in metric.samples
            if sample.name == "cleanroom_rpc_requests_total" and sample.labels["code"] == "INTERNAL" and sample.value}


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    """A server for one test. Whatever the test sends it (the suite's bad-input tests use this), no
    call may be counted INTERNAL: a bad request is the caller's error, and must not page anyone."""
    instance = start_server(make_config(tmp_path / "state"))
    yield instance
    instance.server.stop(grace=0)
    assert internal_calls(instance.app) == {}, "calls counted INTERNAL in cleanroom_rpc_requests_total"
