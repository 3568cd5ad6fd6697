"""Storage contract tests: the same suite against SQLite and a real PostgreSQL."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect
from sqlalchemy import column as sa_column
from sqlalchemy import table as sa_table
from sqlalchemy.orm import Session

from cleanroom.domain import deid
from cleanroom.domain.datasets import Dataset, IntakeReport
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.idempotency import RequestKey
from cleanroom.domain.identity import Principal, Role, hash_token
from cleanroom.storage import clock, dataset_repo, principal_repo, request_repo, secret_repo
from cleanroom.storage.db import Database, migrate
from cleanroom.storage.tables import Base


@pytest.fixture
def db(database_url: str):
    database = Database(database_url)
    migrate(database.engine)
    yield database
    database.dispose()


def _principal(pid: str = "p1", role: Role = Role.DATA_OWNER) -> Principal:
    return Principal(pid, f"name {pid}", role, clock.now())


def dataset_stored_before(tmp_path: Path, revision: str, missing_key: str) -> tuple[Database, list[dict[str, Any]]]:
    """A SQLite database migrated only to `revision`, holding one dataset whose stored columns lack
    `missing_key`, as a row written before the migration that adds the key; (database, its columns)."""
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(database.engine, to=revision)
    unsaved = Session()  # never flushed: it only builds today's rows, which insert_as_of cuts to the old schema
    principal_repo.add_principal(unsaved, Principal("p1", "owner", Role.DATA_OWNER, clock.now()), "hash")
    dataset_repo.add_dataset(unsaved, _dataset("d1", "p1"), b"wrapped")
    with database.engine.begin() as connection:
        for row in sorted(unsaved.new, key=lambda r: r.__tablename__ != "principals"):
            insert_as_of(connection, row)
    with database.engine.begin() as connection:
        old = [{k: v for k, v in c.items() if k != missing_key} for c in json.loads(stored_columns_json(connection))]
        connection.exec_driver_sql("UPDATE datasets SET columns_json = ?", (json.dumps(old),))
    return database, old


def insert_as_of(connection: Connection, row: Base) -> None:
    """Inserts an ORM row into a database at an older revision: only the columns its table had then
    (today's model names columns that later migrations add)."""
    table = row.__table__
    present = {c["name"] for c in inspect(connection).get_columns(table.name)}
    columns = [sa_column(c.name, c.type) for c in table.columns if c.name in present]
    values = {c.name: getattr(row, c.name) for c in columns}
    connection.execute(sa_table(table.name, *columns).insert().values(**{k: v for k, v in values.items() if v is not None}))


def stored_columns_json(connection: Any) -> str:
    return connection.exec_driver_sql("SELECT columns_json FROM datasets").scalar_one()


def _dataset(did: str, owner: str) -> Dataset:
    columns = (
        deid.ColumnSpec("pid", deid.ColumnType.STRING, deid.ColumnRole.PATIENT_KEY),
        deid.ColumnSpec("age", deid.ColumnType.INTEGER, deid.ColumnRole.QUASI_IDENTIFIER, deid.AgeBand(10, 90)),
        deid.ColumnSpec("zip", deid.ColumnType.STRING, deid.ColumnRole.QUASI_IDENTIFIER, deid.PrefixTruncation(3)),
        deid.ColumnSpec("seen", deid.ColumnType.DATE, deid.ColumnRole.QUASI_IDENTIFIER, deid.DateTruncation("month")),
        deid.ColumnSpec("flag", deid.ColumnType.BOOLEAN, deid.ColumnRole.QUASI_IDENTIFIER, deid.Suppress()),
        deid.ColumnSpec("name", deid.ColumnType.STRING, deid.ColumnRole.DIRECT_IDENTIFIER),
        deid.ColumnSpec("y", deid.ColumnType.INTEGER, deid.ColumnRole.LABEL),
    )
    report = IntakeReport(
        bytes_received=10, rows_received=9, rows_stored=8, k_anonymity=5,
        dropped_columns=("name",), pseudonymized_columns=("pid",), generalized_columns=(("age", "age band"),),
        notes=("a note",),
    )
    return Dataset(did, owner, "display", "desc", columns, 5, 8, 3, report, "ab" * 32, clock.now())


def test_migrations_match_the_models(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_migrate_twice_is_a_no_op(db: Database) -> None:
    migrate(db.engine)
    with db.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == _head_revision()


def _head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from cleanroom.storage.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def test_principal_round_trip_and_token_lookup(db: Database) -> None:
    principal = _principal("p1", Role.MANUFACTURER)
    with db.transaction() as s:
        principal_repo.add_principal(s, principal, hash_token("crt_secret"))
    with db.transaction() as s:
        assert principal_repo.principal_by_token_hash(s, hash_token("crt_secret")) == principal
        assert principal_repo.principal_by_token_hash(s, hash_token("crt_other")) is None
        assert principal_repo.get_principal(s, "p1") == principal
        assert principal_repo.get_principal(s, "missing") is None


def test_principals_page_in_id_order(db: Database) -> None:
    with db.transaction() as s:
        for i in range(5):
            principal_repo.add_principal(s, _principal(f"p{i}"), hash_token(f"t{i}"))
    with db.transaction() as s:
        first = principal_repo.list_principals(s, after_id=None, limit=2)
        rest = principal_repo.list_principals(s, after_id=first[-1].id, limit=10)
    assert [p.id for p in first + rest] == [f"p{i}" for i in range(5)]


def test_dataset_round_trip_keeps_every_field(db: Database) -> None:
    with db.transaction() as s:
        principal_repo.add_principal(s, _principal("owner"), hash_token("t"))
        s.flush()
        dataset_repo.add_dataset(s, _dataset("d1", "owner"), b"wrapped")
    with db.transaction() as s:
        stored = dataset_repo.get_dataset(s, "d1")
        key = dataset_repo.wrapped_dataset_key(s, "d1")
    expected = _dataset("d1", "owner")
    assert stored is not None
    assert stored.columns == expected.columns
    assert stored.report == expected.report
    assert (stored.row_count, stored.patient_count, stored.ciphertext_sha256) == (8, 3, "ab" * 32)
    assert abs(stored.created_at - expected.created_at) < timedelta(seconds=5)
    assert stored.created_at.tzinfo is not None
    assert key == b"wrapped"


def test_datasets_list_by_owner_and_shred(db: Database) -> None:
    with db.transaction() as s:
        principal_repo.add_principal(s, _principal("a"), hash_token("ta"))
        principal_repo.add_principal(s, _principal("b"), hash_token("tb"))
        s.flush()
        dataset_repo.add_dataset(s, _dataset("d1", "a"), b"k1")
        dataset_repo.add_dataset(s, _dataset("d2", "b"), b"k2")
        dataset_repo.add_dataset(s, _dataset("d3", "a"), b"k3")
    with db.transaction() as s:
        assert [d.id for d in dataset_repo.list_datasets(s, owner_id="a", after_id=None, limit=10)] == ["d1", "d3"]
        assert dataset_repo.shred_dataset(s, "d1") is True
        assert dataset_repo.shred_dataset(s, "d1") is False
    with db.transaction() as s:
        assert dataset_repo.get_dataset(s, "d1") is None
        assert dataset_repo.wrapped_dataset_key(s, "d1") is None
        assert [d.id for d in dataset_repo.list_datasets(s, owner_id="a", after_id=None, limit=10)] == ["d3"]
        assert sorted(i for i, _ in dataset_repo.live_wrapped_keys(s)) == ["d2", "d3"]


def test_secrets_upsert(db: Database) -> None:
    with db.transaction() as s:
        secret_repo.put_secret(s, "x", b"one")
    with db.transaction() as s:
        secret_repo.put_secret(s, "x", b"two")
    with db.transaction() as s:
        assert secret_repo.get_secret(s, "x") == b"two"
        assert secret_repo.all_secrets(s) == [("x", b"two")]


def test_request_claims(db: Database) -> None:
    key = RequestKey("p", "M", "r1")
    with db.transaction() as s:
        assert request_repo.claim_request(s, key, "fp") is None
    with db.transaction() as s:
        existing = request_repo.claim_request(s, key, "fp")
        assert existing is not None and existing.response is None
        request_repo.complete_request(s, key, b"answer")
    with db.transaction() as s:
        assert request_repo.claim_request(s, key, "fp").response == b"answer"
        request_repo.release_request(s, key)  # a completed answer is never released
    with db.transaction() as s:
        assert request_repo.claim_request(s, key, "fp").response == b"answer"


def test_concurrent_claims_admit_exactly_one(db: Database) -> None:
    key = RequestKey("p", "M", "race")
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        try:
            with db.transaction() as s:
                outcomes.append("claimed" if request_repo.claim_request(s, key, "fp") is None else "seen")
        except CleanroomError as error:
            assert error.code is ErrorCode.REQUEST_IN_PROGRESS
            outcomes.append("busy")

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("claimed") == 1
    assert len(outcomes) == 8


def test_start_up_releases_in_flight_claims(db: Database) -> None:
    with db.transaction() as s:
        request_repo.claim_request(s, RequestKey("p", "M", "a"), "fp")
        request_repo.claim_request(s, RequestKey("p", "M", "b"), "fp")
        request_repo.complete_request(s, RequestKey("p", "M", "b"), b"done")
    with db.transaction() as s:
        assert request_repo.release_all_in_flight(s) == 1
    with db.transaction() as s:
        assert request_repo.claim_request(s, RequestKey("p", "M", "a"), "fp2") is None


def test_replicas_starting_on_new_sqlite_files_all_come_up(tmp_path) -> None:
    """The start-up race, repeated on fresh files: switching a new file to WAL answers "locked"
    without waiting while another replica migrates; before the retry, half of these runs failed."""
    for round_ in range(15):
        assert _start_together(f"sqlite:///{tmp_path / f'new-{round_}.db'}", replicas=8) == []


def _start_together(url: str, *, replicas: int) -> list[BaseException]:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            database = Database(url)
            migrate(database.engine)
            database.dispose()
        except BaseException as error:  # noqa: BLE001 - collected and asserted by the caller
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_start_ups_migrate_once(database_url: str) -> None:
    """Several replicas starting on an empty database at once: every one comes up, schema intact."""
    assert _start_together(database_url, replicas=4) == []
    database = Database(database_url)
    with database.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == _head_revision()
    database.dispose()
