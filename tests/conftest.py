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
from cleanroom.app import App, build_app
from cleanroom.config import ServerConfig
from cleanroom.domain.identity import Role
from cleanroom.sdk import Client
from cleanroom.storage.db import default_url

POSTGRES_ENV = "CLEANROOM_TEST_POSTGRES_URL"


def _postgres_admin_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{POSTGRES_ENV} is not set: CI must run the PostgreSQL tests (see scripts/with-services)")
        pytest.skip("PostgreSQL not available here; run through `make test` to start one")
    return url


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


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    instance = start_server(make_config(tmp_path / "state"))
    yield instance
    instance.server.stop(grace=0)
