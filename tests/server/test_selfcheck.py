"""The start-up self-check: `cleanroom serve` refuses to start on a host that cannot run a workload,
naming what is missing, and `cleanroom doctor` prints the same checks. Real processes, real probes,
a PATH that really lacks the sandbox tools."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
import sqlalchemy

from cleanroom.server.config import ServerConfig
from cleanroom.server.selfcheck import run_checks
from cleanroom.storage.db import Database, default_url, migrate
from tests.processes import cli_argv
from tests.tools import needs

pytestmark = needs("bwrap", "runsc")
SANDBOX_TOOLS = ("bwrap", "runsc")


def path_without(tmp_path: Path, *hidden: str) -> str:
    """A PATH holding every program of this one except `hidden` (links in a folder of our own)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            link = folder / name
            if name not in hidden and not link.exists():
                link.symlink_to(Path(directory) / name)
    return str(folder)


def run_cli(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"PATH": path} if path else {})}
    return subprocess.run(cli_argv(*args), capture_output=True, text=True, env=env, timeout=120)


def config(tmp_path: Path, **overrides: object) -> ServerConfig:
    state = tmp_path / "state"
    values: dict[str, object] = {"state_dir": state, "database_url": default_url(state), **overrides}
    return ServerConfig(**values)  # type: ignore[arg-type]


def by_name(checks: list) -> dict:
    return {check.name: check for check in checks}


def test_serve_refuses_to_start_without_the_sandbox_tools_and_names_them(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    result = run_cli("serve", "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:0", "--metrics-listen", "",
                     "--port-file", str(port_file), path=path_without(tmp_path, *SANDBOX_TOOLS))
    assert result.returncode == 2, result.stderr
    assert not port_file.exists()  # it never served
    assert "refusing to start" in result.stderr and "Traceback" not in result.stderr
    for workload in ("model intake", "training and evaluation", "statistics"):
        assert f"sandbox: {workload}: " in result.stderr
    assert "bwrap is not installed" in result.stderr and "apt-get install bubblewrap" in result.stderr


def test_serve_refuses_without_bubblewrap_even_when_gvisor_works(tmp_path: Path) -> None:
    """Training and statistics run in bubblewrap; gVisor alone covers only model intake."""
    result = run_cli("serve", "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:0", "--metrics-listen", "",
                     path=path_without(tmp_path, "bwrap"))
    assert result.returncode == 2
    assert "sandbox: statistics: bwrap unavailable: bwrap is not installed" in result.stderr
    assert "sandbox: model intake" not in result.stderr  # gVisor still serves intake


def test_doctor_prints_every_check_and_passes_on_a_good_host(tmp_path: Path) -> None:
    result = run_cli("doctor", "--state-dir", str(tmp_path / "state"), "--metrics-listen", "127.0.0.1:0")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split("  ")[0]: line for line in result.stdout.splitlines()[2:]}
    assert set(rows) == {"sandbox: model intake", "sandbox: training and evaluation", "sandbox: statistics", "cgroups",
                         "database", "storage identity", "key file", "metrics port"}
    assert all("  ok  " in line for line in rows.values()), result.stdout
    assert "gVisor runsc" in rows["sandbox: model intake"]


def test_doctor_fails_on_a_missing_tool_and_says_serve_would_refuse(tmp_path: Path) -> None:
    result = run_cli("doctor", "--state-dir", str(tmp_path / "state"), "--metrics-listen", "",
                     path=path_without(tmp_path, *SANDBOX_TOOLS))
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "would refuse to start" in result.stderr


def test_a_readable_key_file_is_refused(tmp_path: Path) -> None:
    from cleanroom.crypto import LocalKeyFileProvider

    provider = LocalKeyFileProvider(tmp_path / "state")
    provider.current_key_id()  # creates the key file, 0600
    assert by_name(run_checks(config(tmp_path)))["key file"].ok
    provider.path.chmod(0o644)
    check = by_name(run_checks(config(tmp_path)))["key file"]
    assert not check.ok and check.required and "0644" in check.detail and "chmod 600" in check.detail


def test_a_busy_metrics_port_is_refused(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        check = by_name(run_checks(config(tmp_path, metrics_listen=address)))["metrics port"]
    assert not check.ok and "already in use" in check.detail


def test_database_states_pending_migrations_and_unknown_revisions(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg.state_dir.mkdir()
    assert "not created yet" in by_name(run_checks(cfg))["database"].detail
    migrate(Database(cfg.database_url).engine)
    assert "migrations at head" in by_name(run_checks(cfg))["database"].detail
    engine = sqlalchemy.create_engine(cfg.database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00d'")
    engine.dispose()
    check = by_name(run_checks(cfg))["database"]
    assert not check.ok and "f00d" in check.detail and "newer" in check.detail


def test_an_unreachable_database_is_refused(tmp_path: Path) -> None:
    check = by_name(run_checks(config(tmp_path, database_url="postgresql://nobody@127.0.0.1:1/none")))["database"]
    assert not check.ok and check.detail.startswith("cannot connect")


DAMAGE_SAID = {"random bytes": "file is not a database", "zeroed header": "file is not a database",
               "truncated": "database disk image is malformed", "last page overwritten": "the SQLite file is damaged"}


def _migrated_then(damage: str, path: Path) -> None:
    database = Database(f"sqlite:///{path}")
    migrate(database.engine)
    database.dispose()  # the last connection checkpoints the WAL into the file, which is then damaged
    assert not path.with_name(path.name + "-wal").exists()
    data = path.read_bytes()
    damaged = {"zeroed header": lambda: b"\0" * 100 + data[100:], "truncated": lambda: data[:len(data) // 3],
               "last page overwritten": lambda: data[:-4096] + os.urandom(4096)}  # a read of one table still works
    path.write_bytes(damaged[damage]())


@pytest.mark.parametrize("damage", sorted(DAMAGE_SAID))
def test_a_corrupted_database_file_is_refused_in_one_line(tmp_path: Path, damage: str) -> None:
    cfg = config(tmp_path)
    cfg.state_dir.mkdir()
    path = Path(cfg.database_url.removeprefix("sqlite:///"))
    if damage == "random bytes":
        path.write_bytes(os.urandom(4096))
    else:
        _migrated_then(damage, path)
    result = run_cli("serve", "--state-dir", str(cfg.state_dir), "--listen", "127.0.0.1:0", "--metrics-listen", "")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    database_line = next(line for line in result.stderr.splitlines() if line.startswith("  - database: "))
    assert DAMAGE_SAID[damage] in database_line, result.stderr
