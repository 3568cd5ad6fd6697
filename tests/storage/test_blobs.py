"""The local blob store: atomic commit, abort, crash leftovers and blob id validation."""

from __future__ import annotations

import os
import stat

import pytest

from cleanroom.crypto import SealedReader, SealedWriter, new_data_key
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.storage.blobs import BlobStore


@pytest.fixture
def store(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def _parts(store: BlobStore) -> list[str]:
    return sorted(p.name for p in (store.root / "tmp").iterdir())


def test_commit_publishes_atomically(store: BlobStore) -> None:
    with store.create("ds-1") as pending:
        pending.write(b"hello ")
        pending.write(b"world")
        assert not store.exists("ds-1")  # invisible until commit
        assert pending.path.name.startswith("ds-1.") and pending.path.suffix == ".part"
        path = pending.commit()
    assert path == store.path_of("ds-1") == store.root / "ds-1.blob"
    assert store.exists("ds-1")
    with store.open("ds-1") as fh:
        assert fh.read() == b"hello world"
    assert _parts(store) == []


def test_permissions(store: BlobStore) -> None:
    with store.create("ds1") as pending:
        pending.write(b"x")
        pending.commit()
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.root / "tmp").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.path_of("ds1")).st_mode) == 0o600


def test_commit_replaces_existing_blob(store: BlobStore) -> None:
    for content in (b"old", b"new"):
        with store.create("ds1") as pending:
            pending.write(content)
            pending.commit()
    with store.open("ds1") as fh:
        assert fh.read() == b"new"


def test_abort_removes_temp_file(store: BlobStore) -> None:
    pending = store.create("ds1")
    pending.write(b"partial")
    assert _parts(store) == [pending.path.name]
    pending.abort()
    pending.abort()  # idempotent
    assert _parts(store) == [] and not store.exists("ds1")
    with pytest.raises(ValueError):
        pending.commit()


def test_exception_in_with_aborts(store: BlobStore) -> None:
    with pytest.raises(RuntimeError):
        with store.create("ds1") as pending:
            pending.write(b"partial")
            raise RuntimeError("client went away")
    assert _parts(store) == [] and not store.exists("ds1")


def test_leaving_with_without_commit_aborts(store: BlobStore) -> None:
    with store.create("ds1") as pending:
        pending.write(b"forgotten")
    assert _parts(store) == [] and not store.exists("ds1")


def test_open_missing_is_not_found(store: BlobStore) -> None:
    with pytest.raises(CleanroomError) as info:
        store.open("nope")
    assert info.value.code is ErrorCode.NOT_FOUND
    assert info.value.message == "dataset not found"


def test_delete_is_idempotent(store: BlobStore) -> None:
    with store.create("ds1") as pending:
        pending.commit()
    store.delete("ds1")
    assert not store.exists("ds1") and not store.path_of("ds1").exists()
    store.delete("ds1")
    store.delete("never-existed")


def test_sweep_removes_crash_leftovers(store: BlobStore) -> None:
    crashed = [store.create(f"ds{i}") for i in range(3)]
    for pending in crashed:  # a crash: files closed, neither committed nor aborted
        pending.write(b"half")
        pending.file.close()
    with store.create("kept") as pending:
        pending.commit()
    assert len(_parts(store)) == 3
    assert store.sweep_temporary() == 3
    assert _parts(store) == [] and store.exists("kept")
    assert BlobStore(store.root).sweep_temporary() == 0


@pytest.mark.parametrize(
    "bad", ["", "../etc", "a/b", "..", ".", "a.b", "x\n", "a" * 65, "ä", "/abs", "a\x00b"]
)
def test_bad_blob_ids_rejected(store: BlobStore, bad: str) -> None:
    for op in (store.create, store.open, store.exists, store.delete, store.path_of):
        with pytest.raises(ValueError):
            op(bad)
    assert _parts(store) == []


def test_longest_valid_id_accepted(store: BlobStore) -> None:
    blob_id = "A-z_9" * 12 + "abcd"
    assert len(blob_id) == 64
    assert store.path_of(blob_id).parent == store.root


def test_sealed_blob_end_to_end(store: BlobStore) -> None:
    key, data = new_data_key(), os.urandom(5000) + b"CANARY-123456"
    with store.create("ds1") as pending:
        with SealedWriter(pending, key, "ds1", chunk_size=1024) as writer:
            writer.write(data)
        pending.commit()
    raw = store.path_of("ds1").read_bytes()
    assert b"CANARY-123456" not in raw
    with store.open("ds1") as fh, SealedReader(fh, key, "ds1") as reader:
        reader.seek(4000)
        assert reader.read() == data[4000:]
