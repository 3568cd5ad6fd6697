"""A local store of opaque (already sealed) blobs: `<root>/<blob_id>.blob`.

Writes go to `<root>/tmp/<owner>/*.part` (owner: the writing server's instance id, so replicas
sharing the volume tell their partial writes apart) and become visible only through an fsync +
atomic rename, so a crash leaves either the old blob, the new one, or a stray .part file for
sweep_temporary() to remove once its server's lease has expired.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Collection
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.storage.fsync import fsync_dir

_BLOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _check_id(blob_id: str) -> str:
    # fullmatch, not `$`: `$` would accept a trailing newline.
    if not isinstance(blob_id, str) or not _BLOB_ID.fullmatch(blob_id):
        raise ValueError("blob id must match [A-Za-z0-9_-]{1,64}")
    return blob_id


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)  # mkdir's mode is narrowed by umask but never applied to existing dirs


class PendingBlob:
    """A blob being written. Nothing is visible until commit(); leaving `with` without a
    commit (by exception or not) aborts, so only deliberate, complete writes are published."""

    def __init__(self, blob_id: str, tmp_path: Path, final_path: Path) -> None:
        self.blob_id = blob_id
        self.path = tmp_path
        self._final = final_path
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self._done = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def tell(self) -> int:
        return self.file.tell()

    def commit(self) -> Path:
        """Make the blob durable and visible under its final name (replacing any old one)."""
        self._require_open()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.path, self._final)
        self._done = True
        fsync_dir(self._final.parent)
        return self._final

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self.file.close()
        self.path.unlink(missing_ok=True)

    def _require_open(self) -> None:
        if self._done:
            raise ValueError("blob already committed or aborted")

    def __enter__(self) -> PendingBlob:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()


class BlobStore:
    """Blobs as files under `root` (0700). Blob ids are validated, so no path can escape root."""

    def __init__(self, root: Path | str, owner: str | None = None) -> None:
        self.root = Path(root)
        self._tmp = self.root / "tmp"
        _private_dir(self.root)
        _private_dir(self._tmp)
        self._own_tmp = self._tmp
        if owner is not None:
            self._own_tmp = self._tmp / _check_id(owner)
            _private_dir(self._own_tmp)

    def path_of(self, blob_id: str) -> Path:
        return self.root / f"{_check_id(blob_id)}.blob"

    def create(self, blob_id: str) -> PendingBlob:
        final = self.path_of(blob_id)
        if not self._own_tmp.is_dir():  # a peer's sweep took it while this server's lease had lapsed
            _private_dir(self._own_tmp)
        tmp = self._own_tmp / f"{blob_id}.{secrets.token_hex(8)}.part"
        return PendingBlob(blob_id, tmp, final)

    def open(self, blob_id: str) -> BinaryIO:
        try:
            return open(self.path_of(blob_id), "rb")
        except FileNotFoundError:
            raise CleanroomError(ErrorCode.NOT_FOUND, "dataset not found") from None

    def list_ids(self) -> list[str]:
        return sorted(p.name.removesuffix(".blob") for p in self.root.glob("*.blob"))

    def exists(self, blob_id: str) -> bool:
        return self.path_of(blob_id).is_file()

    def delete(self, blob_id: str) -> None:
        """Idempotent: deleting a missing blob is not an error."""
        path = self.path_of(blob_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(self.root)

    def sweep_temporary(self, live: Callable[[], Collection[str]] | None = None) -> int:
        """Remove leftover .part files (e.g. after a crash). With `live` (returning the instance ids
        of servers holding a live lease, asked after the folders are listed, so a server starting
        meanwhile counts as live), only other owners' folders go, and unowned files from before
        owners; without it, every partial write goes (only safe before any writer runs)."""
        removed = sum(_unlink(part) for part in self._tmp.glob("*.part"))
        folders = [f for f in self._tmp.iterdir() if f.is_dir() and not f.is_symlink()]
        keep = set(live()) if live is not None else set()
        for folder in folders:
            if folder.name in keep:
                continue
            removed += sum(_unlink(part) for part in folder.glob("*.part"))
            if folder != self._own_tmp:
                try:
                    folder.rmdir()
                except OSError:  # a file appeared meanwhile (its writer was not dead after all)
                    pass
        return removed


def _unlink(path: Path) -> int:
    try:
        path.unlink()
        return 1
    except FileNotFoundError:
        return 0
