"""Engine, sessions and migrations. SQLite (a file in the state directory) by default, PostgreSQL by URL."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import CursorResult, Engine, Insert, Result, Select, Table, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def default_url(state_dir: Path) -> str:
    return f"sqlite:///{state_dir / 'cleanroom.db'}"


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    prefix = "sqlite:///"
    return Path(url[len(prefix):]) if url.startswith(prefix) and len(url) > len(prefix) else None


def make_engine(url: str, *, writer: bool = True) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        # Writers take the write lock at BEGIN, so concurrent writers queue instead of failing
        # mid-transaction; readers begin deferred and, under WAL, never wait for a writer.
        begin = "BEGIN IMMEDIATE" if writer else "BEGIN"
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    dbapi_connection.isolation_level = None  # type: ignore[attr-defined]  # we issue BEGIN ourselves
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    _use_wal(cursor)
    cursor.close()


def _use_wal(cursor: sqlite3.Cursor, patience_s: float = 30.0) -> None:
    """Switches the file to WAL (persistent, so only its first opener does the work). The switch
    needs the file to itself and SQLite answers "locked" at once instead of waiting, so replicas
    opening a new database together retry here."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(engine: Engine, to: str = "head") -> None:
    """Applies every pending Alembic migration (run at start-up); `to` stops earlier (tests)."""
    config = _alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas starting together on an empty database take turns (SQLite locks the file).
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(424242)")
        config.attributes["connection"] = connection
        command.upgrade(config, to)


@dataclass(frozen=True)
class MigrationState:
    current: str | None   # None: an empty database
    head: str
    known: frozenset[str]
    damage: str = ""      # SQLite's quick_check finding (a truncated or overwritten file); "" when sound


def migration_state(url: str) -> MigrationState:
    """Where a database stands against this code's migrations, without changing it."""
    script = ScriptDirectory.from_config(_alembic_config())
    engine = make_engine(url, writer=False)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
            damage = _sqlite_damage(connection) if engine.dialect.name == "sqlite" else ""
    finally:
        engine.dispose()
    known = frozenset(revision.revision for revision in script.walk_revisions())
    return MigrationState(current, script.get_current_head() or "", known, damage)


def _sqlite_damage(connection: Any) -> str:
    """A damaged SQLite file can still answer a read of one small table; quick_check reads every
    page (the metadata database is small: datasets and models live in the blob store)."""
    finding = connection.exec_driver_sql("PRAGMA quick_check(1)").scalar()
    return "" if finding == "ok" else "; ".join(str(finding).splitlines())


_INSERTS_IGNORING_DUPLICATES: dict[tuple[str, str], Insert] = {}


def insert_ignoring_duplicates(session: Session, table: Table) -> Insert:
    """INSERT … ON CONFLICT DO NOTHING into `table`, in the dialect of the session's database (built once)."""
    key = (session.get_bind().dialect.name, table.name)
    if key not in _INSERTS_IGNORING_DUPLICATES:
        if key[0] == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as postgresql_insert
            statement: Insert = postgresql_insert(table).on_conflict_do_nothing()
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert
            statement = sqlite_insert(table).on_conflict_do_nothing()
        _INSERTS_IGNORING_DUPLICATES[key] = statement
    return _INSERTS_IGNORING_DUPLICATES[key]


def affected_rows(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched: `Session.execute` is typed as returning a plain
    `Result`, but a DML statement's result is a `CursorResult`, which counts them."""
    assert isinstance(result, CursorResult)
    return result.rowcount


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # On PostgreSQL one engine serves both; SQLite needs a deferred-BEGIN engine for reads.
        self._read_engine = make_engine(url, writer=False) if url.startswith("sqlite") else self.engine
        self._read_sessions = sessionmaker(self._read_engine, expire_on_commit=False)
        self._driver_reads = DriverReads(self._read_engine)
        self._snapshot_reads = url.startswith("postgresql")  # SQLite's read transaction is one snapshot already

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on any exception."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A consistent read that takes no write lock; anything written in it is rolled back. On
        PostgreSQL it is one snapshot (REPEATABLE READ): under the default READ COMMITTED each
        statement would see a newer state, so the audit head read first could disagree with the
        entries read after it while another replica appends."""
        with self._read_sessions() as session:
            if self._snapshot_reads:
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            try:
                yield session
            finally:
                session.rollback()

    def lookup(self) -> DriverReads:
        """Single-statement reads for hot paths, on the driver's own cursor."""
        return self._driver_reads

    def dispose(self) -> None:
        self.engine.dispose()
        self._read_engine.dispose()


class DriverReads:
    """One-statement reads on the DBAPI cursor of a pooled connection, each statement compiled once.

    On a hot path a SQLAlchemy Core execution costs ~100 µs on SQLite and the driver ~5 µs; the
    rows come back as the driver gives them (strings, integers, bytes), which suits lookups of
    plain columns. A single statement is its own consistent snapshot: on SQLite it runs in
    autocommit (no BEGIN), and PostgreSQL's implicit transaction is rolled back when the pool
    takes the connection back."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._compiled: dict[Select[*tuple[Any, ...]], tuple[str, tuple[str, ...] | None]] = {}

    def first(self, statement: Select[*tuple[Any, ...]], params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        sql, order = self._compile(statement)
        connection = self._engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(sql, tuple(params[name] for name in order) if order is not None else dict(params))
                row = cursor.fetchone()
            finally:
                cursor.close()
        finally:
            connection.close()
        return None if row is None else tuple(row)

    def _compile(self, statement: Select[*tuple[Any, ...]]) -> tuple[str, tuple[str, ...] | None]:
        compiled = self._compiled.get(statement)
        if compiled is None:
            sql = statement.compile(dialect=self._engine.dialect)
            order = tuple(sql.positiontup or ()) if self._engine.dialect.positional else None
            compiled = self._compiled[statement] = (sql.string, order)
        return compiled


def first_row(source: Session | DriverReads, statement: Select[*tuple[Any, ...]], params: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The first row of `statement` from a session or the hot-path driver reads."""
    if isinstance(source, DriverReads):
        return source.first(statement, params)
    row = source.execute(statement, dict(params)).first()
    return None if row is None else tuple(row)
