"""Storage identity: a missing, emptied or wrong database beside stored blobs is refused, and only
`cleanroom admin gc` (dry run, or --yes) removes a blob no row references."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from cleanroom.domain.identity import Role
from cleanroom.sdk import Client
from cleanroom.server.app import build_app, recover
from cleanroom.storage import audit_repo, clock, identity
from cleanroom.storage.db import Database, default_url, migrate
from cleanroom.storage.identity import MARKER, StorageIdentityError
from cleanroom.storage.tables import ModelRow
from tests.api.test_datasets_api import _rows, _schema, _write_csv
from tests.conftest import make_config
from tests.server.test_server_process import _spawn_server, cli
from tests.storage.rows import add_released_training_job
from tests.tools import needs


def _blobs(state: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((state / "blobs").glob("*.blob"))}


def _database_files(state: Path) -> list[Path]:
    return [state / name for name in ("cleanroom.db", "cleanroom.db-wal", "cleanroom.db-shm")]


def _refused_serve(state: Path, *extra: str):
    """`cleanroom serve` that must refuse (if it started, the 60 s timeout fails the test)."""
    return cli("serve", "--state-dir", str(state), "--listen", "127.0.0.1:0", *extra, check=False)


def _assert_refused(result, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    line = next(line for line in result.stderr.splitlines() if "storage identity" in line)
    for word in words:
        assert word in line, line
    assert "Traceback" not in result.stderr


@needs("bwrap")
def test_a_missing_emptied_or_other_database_beside_stored_datasets_is_refused_and_every_blob_stays(tmp_path: Path) -> None:
    state = tmp_path / "state"
    admin_token = cli("admin", "bootstrap", "--state-dir", str(state)).stdout.strip()
    process, address = _spawn_server(state)
    try:
        with Client(address, admin_token) as admin:
            owner_token = admin.create_principal("Hospital", "data_owner").token
        with Client(address, owner_token) as owner:
            stored = [owner.upload_dataset(_write_csv(tmp_path / f"d{i}.csv", _rows()), _schema()).name for i in range(2)]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    before = _blobs(state)
    assert len(before) == 2
    backup = tmp_path / "backup"
    backup.mkdir()
    for path in _database_files(state):
        if path.exists():
            path.rename(backup / path.name)

    # 1. The database file is gone.
    result = _refused_serve(state)
    _assert_refused(result, "no storage identity", str(state / "cleanroom.db"), str(state / "blobs"),
                    "restore the database", "--database-url")
    assert _blobs(state) == before
    assert not (state / "cleanroom.db").exists()  # refused before anything created a new one
    doctor = cli("doctor", "--state-dir", str(state), check=False)
    assert doctor.returncode == 1 and "storage identity" in doctor.stderr + doctor.stdout

    # 2. The database file is there but empty.
    (state / "cleanroom.db").write_bytes(b"")
    _assert_refused(_refused_serve(state), "no storage identity", "restore the database")
    assert _blobs(state) == before

    # 3. --database-url names a new database.
    (state / "cleanroom.db").unlink()
    other = f"sqlite:///{tmp_path / 'new.db'}"
    _assert_refused(_refused_serve(state, "--database-url", other), str(tmp_path / "new.db"), "--database-url")
    assert _blobs(state) == before

    # Restoring the database brings everything back.
    for path in backup.iterdir():
        path.rename(state / path.name)
    process, address = _spawn_server(state)
    try:
        with Client(address, owner_token) as owner:
            assert sorted(d.name for d in owner.list_datasets()) == sorted(stored)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert _blobs(state) == before


def test_a_database_and_blob_store_of_two_deployments_are_refused(tmp_path: Path) -> None:
    for name in ("a", "b"):
        cli("admin", "bootstrap", "--state-dir", str(tmp_path / name))
    marker_a = json.loads((tmp_path / "a" / "blobs" / MARKER).read_text())
    marker_b = json.loads((tmp_path / "b" / "blobs" / MARKER).read_text())
    assert marker_a["blob_store_id"] != marker_b["blob_store_id"]
    result = _refused_serve(tmp_path / "a", "--database-url", default_url(tmp_path / "b"))
    _assert_refused(result, "belongs to", marker_b["database_id"], marker_a["blob_store_id"], marker_a["database_id"])
    bootstrap = cli("admin", "bootstrap", "--state-dir", str(tmp_path / "a"), "--database-url", default_url(tmp_path / "b"), check=False)
    assert bootstrap.returncode == 2 and "belongs to" in bootstrap.stderr and "Traceback" not in bootstrap.stderr
    state = tmp_path / "a"
    (state / "cleanroom.db").unlink()
    bootstrap = cli("admin", "bootstrap", "--state-dir", str(state), check=False)
    assert bootstrap.returncode == 2 and "restore the database" in bootstrap.stderr
    assert not (state / "cleanroom.db").exists()  # refused before migrating made a new one


def test_build_app_refuses_an_empty_database_beside_blobs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    app = build_app(make_config(state))
    _store(app, "dkept", b"sealed")
    app.close()
    with pytest.raises(StorageIdentityError, match="restore the database"):
        build_app(make_config(state, database_url=f"sqlite:///{tmp_path / 'other.db'}"))
    assert _blobs(state) == {"dkept.blob": b"sealed"}


def test_an_existing_deployment_without_identities_adopts_them_once(tmp_path: Path) -> None:
    """A database at 0007 with rows, beside its blobs (no marker): migrated, paired, not refused."""
    state = tmp_path / "state"
    (state / "blobs").mkdir(parents=True)
    (state / "blobs" / "mprogram.blob").write_bytes(b"sealed model")
    (state / "blobs" / "dstray.blob").write_bytes(b"unreferenced")
    db = Database(default_url(state))
    migrate(db.engine, to="0007")
    with db.engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO principals (id, display_name, role, token_hash, created_at) "
                                   "VALUES ('maker', 'm', 'manufacturer', 'h', '2026-01-01 00:00:00')")
        connection.execute(ModelRow.__table__.insert().values(
            id="mprogram", owner_id="maker", name="m", version="1", state="accepted", package_sha256="0" * 64, task="t",
            num_classes=2, input_shape_json="[30]", trainable_json="[]", report_json="{}", wrapped_key=b"k",
            created_at=clock.now()))
    db.dispose()
    assert identity.inspect(default_url(state), state / "blobs").action == "pair"
    app = build_app(make_config(state))
    recover(app)
    with app.db.engine.connect() as connection:
        row = identity.database_identity(connection)
    app.close()
    marker = identity.read_marker(state / "blobs")
    assert marker == row
    assert set(_blobs(state)) == {"mprogram.blob", "dstray.blob"}
    assert identity.inspect(default_url(state), state / "blobs").action == "ok"
    build_app(make_config(state)).close()  # and again: the same pair
    assert identity.read_marker(state / "blobs") == marker


def test_a_crash_between_the_row_and_the_marker_is_completed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    build_app(make_config(state)).close()
    recorded = identity.read_marker(state / "blobs")
    (state / "blobs" / MARKER).unlink()
    assert identity.inspect(default_url(state), state / "blobs").action == "finish"
    build_app(make_config(state)).close()
    assert identity.read_marker(state / "blobs") == recorded


def test_a_blob_store_without_its_marker_beside_a_paired_database_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    app = build_app(make_config(state))
    _store(app, "dkept", b"sealed")
    app.close()
    (state / "blobs" / MARKER).unlink()
    with pytest.raises(StorageIdentityError, match="no identity marker"):
        build_app(make_config(state))


# --- cleanroom admin gc ------------------------------------------------------------------------


def _store(app, blob_id: str, data: bytes) -> None:
    with app.datasets._blobs.create(blob_id) as pending:
        pending.write(data)
        pending.commit()


def _deployment_with_an_orphan(tmp_path: Path) -> Path:
    """Model program and job artefacts referenced by rows, one dataset-like blob no row references."""
    state = tmp_path / "state"
    app = build_app(make_config(state))
    for blob_id in ("mprogram", "jdone-a0", "dorphan"):
        _store(app, blob_id, f"sealed {blob_id}".encode())
    maker, _ = app.principals.create("maker", Role.MANUFACTURER, actor="test")
    with app.db.transaction() as session:
        add_released_training_job(session, owner_id=maker.id, model_id="mprogram", job_id="jdone",
                                  artifacts=[("weights.safetensors", "jdone-a0")])
    recover(app)
    app.close()
    return state


def _gc_actions(state: Path) -> list[dict]:
    db = Database(default_url(state))
    try:
        with db.read() as session:
            return [e.details for e in audit_repo.entries(session) if e.action == "blobs.gc"]
    finally:
        db.dispose()


def test_gc_dry_run_lists_the_unreferenced_blob_and_removes_nothing(tmp_path: Path) -> None:
    state = _deployment_with_an_orphan(tmp_path)
    before = _blobs(state)
    assert set(before) == {"mprogram.blob", "jdone-a0.blob", "dorphan.blob"}  # start-up swept nothing
    result = cli("admin", "gc", "--state-dir", str(state), "--dry-run", "--min-age", "0")
    assert result.stdout.split() == ["unreferenced", "dorphan", str(len(before["dorphan.blob"])), "bytes"]
    assert "re-run with --yes" in result.stderr
    assert _blobs(state) == before
    young = cli("admin", "gc", "--state-dir", str(state), "--dry-run")  # default --min-age: an hour
    assert "skipped" in young.stdout and "dorphan" in young.stdout and "unreferenced " not in young.stdout
    assert _gc_actions(state) == []
    with pytest.raises(SystemExit):  # one of --dry-run / --yes is required
        from cleanroom.cli.main import build_parser

        build_parser({}).parse_args(["admin", "gc", "--state-dir", str(state)])


def test_gc_yes_removes_only_the_unreferenced_blob_and_audits_it(tmp_path: Path) -> None:
    state = _deployment_with_an_orphan(tmp_path)
    before = _blobs(state)
    result = cli("admin", "gc", "--state-dir", str(state), "--yes", "--min-age", "0")
    assert result.stdout.split()[:2] == ["removed", "dorphan"]
    assert "admin gc removed unreferenced blob dorphan" in result.stderr  # logged
    after = _blobs(state)
    assert after == {k: v for k, v in before.items() if k != "dorphan.blob"}
    assert _gc_actions(state) == [{"blobs": ["dorphan"], "bytes": len(before["dorphan.blob"]),
                                   "database": identity.read_marker(state / "blobs").database_id}]
    again = cli("admin", "gc", "--state-dir", str(state), "--yes", "--min-age", "0")
    assert again.stdout == "" and _blobs(state) == after


def test_gc_refuses_when_the_database_is_missing_and_removes_nothing(tmp_path: Path) -> None:
    state = _deployment_with_an_orphan(tmp_path)
    before = _blobs(state)
    for path in _database_files(state):
        path.unlink(missing_ok=True)
    result = cli("admin", "gc", "--state-dir", str(state), "--yes", "--min-age", "0", check=False)
    assert result.returncode == 2 and "storage identity" in result.stderr and "restore the database" in result.stderr
    assert _blobs(state) == before
    assert not (state / "cleanroom.db").exists()
    other = cli("admin", "gc", "--state-dir", str(state), "--yes", "--min-age", "0",
                "--database-url", f"sqlite:///{tmp_path / 'other.db'}", check=False)
    assert other.returncode == 2 and _blobs(state) == before
    assert os.listdir(state / "blobs").count(MARKER) == 1


def test_on_each_backend_an_other_or_emptied_database_is_refused_and_the_blob_stays(tmp_path: Path, database_url: str) -> None:
    import sqlalchemy

    from cleanroom.storage.db import make_engine
    from cleanroom.storage.tables import Base

    state = tmp_path / "a"
    app = build_app(make_config(state, database_url=database_url))
    _store(app, "dkept", b"sealed")
    app.close()
    assert identity.inspect(database_url, state / "blobs").action == "ok"
    other = tmp_path / "b"  # another deployment's state directory (its own SQLite database)
    build_app(make_config(other)).close()
    with pytest.raises(StorageIdentityError, match="belongs to"):
        build_app(make_config(other, database_url=database_url))
    assert identity.inspect(database_url, other / "blobs").action == "refuse"

    engine = make_engine(database_url)  # empty the database: no table left
    Base.metadata.drop_all(engine)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP TABLE alembic_version"))
    engine.dispose()
    verdict = identity.inspect(database_url, state / "blobs")
    assert verdict.action == "refuse" and "restore the database" in verdict.detail
    with pytest.raises(StorageIdentityError, match="restore the database"):
        build_app(make_config(state, database_url=database_url))
    assert _blobs(state) == {"dkept.blob": b"sealed"}


def test_replicas_pairing_a_fresh_deployment_at_once_agree_on_one_pair(tmp_path: Path, database_url: str) -> None:
    import threading

    state = tmp_path / "state"
    setup = Database(database_url)
    migrate(setup.engine)
    setup.dispose()
    results: list[object] = []
    start = threading.Barrier(6)

    def replica() -> None:
        db = Database(database_url)
        try:
            start.wait()
            results.append(identity.ensure(db, state / "blobs"))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            results.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=replica) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 6 and len(set(results)) == 1, results
    assert identity.read_marker(state / "blobs") == results[0]
