"""Storage identity: a database and its blob store name each other, so neither is mistaken for the other's.

The database's `storage_identity` row (migration 0008) holds its own identity and its blob store's;
the marker file `<blob dir>/IDENTITY.json` holds the same pair. At start-up (`ensure`, from
build_app) and in the self-check (`inspect`, read-only) the two are compared:

- both present and equal: the pair belongs together;
- both present and different, or one present beside a store or database that holds data: refused;
- a database with no identity (new, emptied, or pointed at by mistake) beside a blob store that
  holds blobs no row of it references: refused. Nothing deletes a blob because a database looks
  empty; the operator restores the database or points --database-url at the right one;
- neither present: a fresh deployment (no blobs, no rows) pairs them; an existing deployment from
  before identities (rows that reference blobs in this store) adopts a pair once.

Pairing writes the database row first and the marker second, under an flock of the blob
directory (replicas share it), so a crash in between leaves a database whose marker start-up
completes, never a marker naming a database that does not exist.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError

from cleanroom.storage.db import Database, make_engine, sqlite_path
from cleanroom.storage.fsync import fsync_dir
from cleanroom.storage.tables import DatasetRow, JobRow, ModelRow, StorageIdentityRow

log = logging.getLogger(__name__)

MARKER = "IDENTITY.json"


class StorageIdentityError(Exception):
    """The database and the blob store do not belong together; the message says which and what to do (one line)."""


@dataclass(frozen=True)
class Identity:
    database_id: str
    blob_store_id: str


@dataclass(frozen=True)
class Verdict:
    action: str          # "ok", "pair" (new identities), "finish" (write the marker from the row), "refuse"
    detail: str          # for the self-check table, or the refusal (one line)


# --- the two halves ----------------------------------------------------------------------------


def read_marker(blob_dir: Path) -> Identity | None:
    path = blob_dir / MARKER
    try:
        raw = json.loads(path.read_text())
        return Identity(str(raw["database_id"]), str(raw["blob_store_id"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StorageIdentityError(f"blob store {blob_dir}: unreadable identity marker {path} ({exc}); "
                                   "restore it from backup") from None


def write_marker(blob_dir: Path, identity: Identity) -> None:
    """Atomically: a temporary file, fsync, rename, fsync of the directory."""
    blob_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = blob_dir / f".{MARKER}.{secrets.token_hex(8)}.tmp"
    body = json.dumps({"database_id": identity.database_id, "blob_store_id": identity.blob_store_id,
                       "written_at": datetime.now(UTC).isoformat()}, sort_keys=True) + "\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, body.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, blob_dir / MARKER)
    fsync_dir(blob_dir)


def blob_ids(blob_dir: Path) -> set[str]:
    """The committed blobs (`*.blob`), without creating the directory."""
    if not blob_dir.is_dir():
        return set()
    return {p.name.removesuffix(".blob") for p in blob_dir.glob("*.blob")}


def database_identity(connection: Connection) -> Identity | None:
    row = connection.execute(sa.select(StorageIdentityRow.database_id, StorageIdentityRow.blob_store_id)
                             .where(StorageIdentityRow.id == 1)).first()
    return Identity(row[0], row[1]) if row else None


def referenced_blob_ids(connection: Connection, tables: set[str] | None = None) -> set[str]:
    """Every blob a row references: live datasets, model programs, job artefacts (`tables`: those that exist)."""
    present = (lambda name: True) if tables is None else tables.__contains__
    held: set[str] = set()
    if present("datasets"):
        held |= set(connection.scalars(sa.select(DatasetRow.id).where(DatasetRow.deleted_at.is_(None))))
    if present("models"):
        held |= set(connection.scalars(sa.select(ModelRow.id)))
    if present("jobs"):
        for listing in connection.scalars(sa.select(JobRow.artifacts_json).where(JobRow.artifacts_json != "[]")):
            held |= {entry["blob"] for entry in json.loads(listing)}
    return held


def describe_database(url: str) -> str:
    path = sqlite_path(url)
    if path is not None:
        return f"database {path}"
    try:
        return f"database {make_url(url).render_as_string(hide_password=True)}"
    except Exception:  # noqa: BLE001 - a URL the driver will reject anyway
        return "database (unparseable URL)"


# --- the decision ------------------------------------------------------------------------------


def decide(database: str, blob_dir: Path, row: Identity | None, marker: Identity | None,
           blobs: set[str], referenced: set[str]) -> Verdict:
    """What start-up does with this pair; `database` and `blob_dir` only name them in messages."""
    store = f"blob store {blob_dir}"
    fix = "restore the database from backup, or point --database-url at the database that stored them"
    if row is not None and marker is not None:
        if row == marker:
            return Verdict("ok", f"{database} and {store} belong together (database {row.database_id}, "
                                 f"blob store {row.blob_store_id})")
        return Verdict("refuse", f"{database} (identity {row.database_id}) belongs to blob store {row.blob_store_id}, "
                                 f"but {store} is {marker.blob_store_id} and belongs to database {marker.database_id}: "
                                 "point --database-url and --state-dir at a database and state directory that "
                                 "belong together (restore whichever was replaced)")
    if row is not None:  # marker missing
        if blobs:
            return Verdict("refuse", f"{store} holds {len(blobs)} blobs but no identity marker ({MARKER}), and "
                                     f"{database} belongs to blob store {row.blob_store_id}: restore the state "
                                     "directory from backup, or point --state-dir at this database's state directory")
        if referenced:
            return Verdict("refuse", f"{database} references {len(referenced)} blobs but {store} is empty and "
                                     f"unpaired: point --state-dir at the state directory of blob store "
                                     f"{row.blob_store_id}, or restore it")
        return Verdict("finish", f"{database} is paired with blob store {row.blob_store_id}; start-up writes "
                                 f"the marker into the empty {store}")
    if marker is not None:  # the database has no identity: new, emptied, or another one
        return Verdict("refuse", f"{database} has no storage identity (new or emptied) but {store} belongs to "
                                 f"database {marker.database_id} and holds {len(blobs)} blobs: {fix}"
                                 + ("" if blobs else f" (if the store really holds no data, remove {blob_dir / MARKER})"))
    if blobs and not referenced:
        return Verdict("refuse", f"{database} is new or empty but {store} holds {len(blobs)} blobs: {fix}; "
                                 "nothing was deleted")
    if blobs and not (blobs & referenced):
        return Verdict("refuse", f"{database} references {len(referenced)} blobs, none of them among the "
                                 f"{len(blobs)} in {store}: {fix}, or --state-dir at this database's state directory")
    if referenced and not blobs:
        return Verdict("refuse", f"{database} references {len(referenced)} blobs but {store} is empty: point "
                                 "--state-dir at this database's state directory, or restore it")
    if blobs:
        return Verdict("pair", f"existing deployment without storage identities ({len(blobs)} blobs, "
                               f"{len(referenced)} referenced): start-up records a pair once")
    return Verdict("pair", f"fresh {database} and empty {store}: start-up pairs them")


# --- start-up and self-check -------------------------------------------------------------------


def inspect(url: str, blob_dir: Path) -> Verdict:
    """Read-only: what start-up would do. The database may be missing, empty, or not yet migrated."""
    database = describe_database(url)
    marker = read_marker(blob_dir)
    blobs = blob_ids(blob_dir)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return decide(database, blob_dir, None, marker, blobs, set())
    engine = make_engine(url, writer=False)
    try:
        with engine.connect() as connection:
            tables = set(sa.inspect(connection).get_table_names())
            row = database_identity(connection) if "storage_identity" in tables else None
            referenced = referenced_blob_ids(connection, tables)
    finally:
        engine.dispose()
    return decide(database, blob_dir, row, marker, blobs, referenced)


def check(url: str, blob_dir: Path) -> None:
    """Before migrations: raises StorageIdentityError if start-up would refuse, so a refused start
    (or bootstrap) does not leave a new, migrated database file beside the blobs."""
    verdict = inspect(url, blob_dir)
    if verdict.action == "refuse":
        raise StorageIdentityError(verdict.detail)


@contextmanager
def _store_lock(blob_dir: Path) -> Iterator[None]:
    blob_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(blob_dir, os.O_RDONLY | os.O_DIRECTORY)  # the directory itself: no lock file beside the blobs
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure(db: Database, blob_dir: Path) -> Identity:
    """Start-up (after migrations): the pair, recorded if new; raises StorageIdentityError if refused."""
    database = describe_database(db.url)
    with _store_lock(blob_dir):
        for _attempt in range(2):
            with db.engine.connect() as connection:
                row = database_identity(connection)
                referenced = referenced_blob_ids(connection)
            marker = read_marker(blob_dir)
            verdict = decide(database, blob_dir, row, marker, blob_ids(blob_dir), referenced)
            if verdict.action == "refuse":
                raise StorageIdentityError(verdict.detail)
            if verdict.action == "ok":
                assert row is not None
                return row
            if verdict.action == "finish":
                assert row is not None
                write_marker(blob_dir, row)
                log.info("storage identity: wrote the blob store marker for %s", verdict.detail)
                return row
            identity = Identity(uuid.uuid4().hex, uuid.uuid4().hex)
            try:
                with db.transaction() as session:
                    session.add(StorageIdentityRow(id=1, database_id=identity.database_id,
                                                   blob_store_id=identity.blob_store_id,
                                                   created_at=datetime.now(UTC)))
            except IntegrityError:
                continue  # a replica on another host paired first: decide again
            write_marker(blob_dir, identity)
            log.warning("storage identity: %s; database %s, blob store %s", verdict.detail,
                        identity.database_id, identity.blob_store_id)
            return identity
    raise StorageIdentityError(f"{database} and blob store {blob_dir}: could not record "
                               "a storage identity (another server keeps changing it)")
