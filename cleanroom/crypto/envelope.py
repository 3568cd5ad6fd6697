"""Data keys and their envelope: 256-bit data keys wrapped (AES-256-GCM) under a KEK.

The data key is wrapped under a KEK held by a KeyProvider, with the owner's id bound as associated
data. Every GCM nonce is an explicit 12 bytes: pycryptodome defaults to 16, which GCM then hashes
into a counter block, losing the standard's nonce guarantees. Sealed blob streams are
cleanroom.crypto.sealed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import stat
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypedDict

from Crypto.Cipher import AES
from Crypto.Random import get_random_bytes

from cleanroom.domain.errors import CleanroomError, ErrorCode, IntegrityError
from cleanroom.storage.fsync import fsync_dir

if TYPE_CHECKING:
    from Crypto.Cipher._mode_gcm import GcmMode

DATA_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16

_WRAP_VERSION = 1
_WRAP_AAD_MAGIC = b"CRWRAP1\n"


def new_data_key() -> bytes:
    return get_random_bytes(DATA_KEY_BYTES)


def _gcm(key: bytes, nonce: bytes) -> GcmMode:
    return AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_BYTES)


def _prefixed(value: bytes) -> bytes:
    """Length-prefix a variable field so that two fields can never run into each other."""
    return struct.pack(">H", len(value)) + value


# --------------------------------------------------------------------------- wrapped data keys


@dataclass(frozen=True)
class WrappedKey:
    """A data key sealed under the KEK `key_id`; `blob` is nonce(12) + ciphertext + tag(16)."""

    key_id: str
    blob: bytes

    def to_bytes(self) -> bytes:
        kid = self.key_id.encode("ascii")
        if not 0 < len(kid) < 256:
            raise ValueError("key id must be 1..255 ASCII characters")
        return bytes([_WRAP_VERSION, len(kid)]) + kid + self.blob

    @classmethod
    def from_bytes(cls, data: bytes) -> WrappedKey:
        # A malformed envelope is stored data gone bad, hence IntegrityError.
        if len(data) < 2 or data[0] != _WRAP_VERSION:
            raise IntegrityError()
        end = 2 + data[1]
        blob = bytes(data[end:])
        if data[1] == 0 or len(blob) != NONCE_BYTES + DATA_KEY_BYTES + TAG_BYTES:
            raise IntegrityError()
        try:
            key_id = bytes(data[2:end]).decode("ascii")
        except UnicodeDecodeError:
            raise IntegrityError() from None
        return cls(key_id, blob)


def _wrap_aad(key_id: str, context: bytes) -> bytes:
    return _WRAP_AAD_MAGIC + _prefixed(key_id.encode("ascii")) + context


def wrap_with_kek(kek: bytes, key_id: str, data_key: bytes, context: bytes) -> WrappedKey:
    """Seal `data_key` under `kek`; the same `context` (e.g. dataset id) is needed to unwrap."""
    if len(data_key) != DATA_KEY_BYTES:
        raise ValueError("data key must be 32 bytes")
    nonce = get_random_bytes(NONCE_BYTES)
    cipher = _gcm(kek, nonce)
    cipher.update(_wrap_aad(key_id, context))
    ciphertext, tag = cipher.encrypt_and_digest(data_key)
    return WrappedKey(key_id, nonce + ciphertext + tag)


def unwrap_with_kek(kek: bytes, wrapped: WrappedKey, context: bytes) -> bytes:
    blob = wrapped.blob
    if len(blob) != NONCE_BYTES + DATA_KEY_BYTES + TAG_BYTES:
        raise IntegrityError()
    cipher = _gcm(kek, blob[:NONCE_BYTES])
    cipher.update(_wrap_aad(wrapped.key_id, context))
    try:
        return cipher.decrypt_and_verify(blob[NONCE_BYTES:-TAG_BYTES], blob[-TAG_BYTES:])
    except ValueError:
        raise IntegrityError() from None


class KeyProvider(Protocol):
    """Holds KEKs. Old KEKs keep unwrapping after rotate() until they are retired."""

    def current_key_id(self) -> str: ...

    def wrap(self, data_key: bytes, *, context: bytes) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey, *, context: bytes) -> bytes: ...

    def rotate(self) -> str: ...

    def retire(self, key_id: str) -> None: ...

    def key_ids(self) -> list[str]: ...


def rewrap(provider: KeyProvider, wrapped: WrappedKey, *, context: bytes) -> WrappedKey:
    """Move a data key to the provider's current KEK (the data itself is not re-encrypted)."""
    data_key = provider.unwrap(wrapped, context=context)
    return provider.wrap(data_key, context=context)


class KeyFileState(TypedDict):
    """kek.json: every KEK (base64) by key id, and the one new data keys are wrapped under."""

    format: int
    keys: dict[str, str]
    current: str


class KeyFileError(CleanroomError):
    """The KEK file is unsafe or unreadable; the service must not start on it."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INTERNAL, message)


class LocalKeyFileProvider(KeyProvider):
    """KEKs in `<state_dir>/keys/kek.json` (0600, directory 0700), created on first use.

    Reads take no lock (the file is only ever replaced atomically); rotate/retire take an
    flock so two processes cannot lose each other's keys.
    """

    def __init__(self, state_dir: Path | str) -> None:
        self._dir = Path(state_dir) / "keys"
        self._path = self._dir / "kek.json"
        self._thread_lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    def current_key_id(self) -> str:
        return self._state()["current"]

    def wrap(self, data_key: bytes, *, context: bytes) -> WrappedKey:
        state = self._state()
        kid = state["current"]
        return wrap_with_kek(_decode_kek(state, kid), kid, data_key, context)

    def unwrap(self, wrapped: WrappedKey, *, context: bytes) -> bytes:
        state = self._state()
        if wrapped.key_id not in state["keys"]:
            raise IntegrityError()  # retired or foreign KEK: the data key is unrecoverable
        return unwrap_with_kek(_decode_kek(state, wrapped.key_id), wrapped, context)

    def rotate(self) -> str:
        with self._mutating() as state:
            kid = _add_kek(state)
            state["current"] = kid
        return kid

    def key_ids(self) -> list[str]:
        return sorted(self._state()["keys"])

    def retire(self, key_id: str) -> None:
        with self._mutating() as state:
            if key_id == state["current"]:
                raise ValueError("cannot retire the current KEK; rotate first")
            state["keys"].pop(key_id, None)

    # -- file handling

    def _state(self) -> KeyFileState:
        if not self._path.exists():
            with self._mutating():
                pass  # creates the file under the lock
        return self._load()

    @contextmanager
    def _mutating(self) -> Iterator[KeyFileState]:
        """Read-modify-write under a thread lock and an flock; creates the file if missing."""
        self._ensure_dir()
        with self._thread_lock, open(self._lock_fd(), "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._load() if self._path.exists() else _new_state()
            yield state
            self._store(state)

    def _ensure_dir(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self._dir, 0o700)

    def _lock_fd(self) -> int:
        return os.open(self._dir / "kek.lock", os.O_RDWR | os.O_CREAT, 0o600)

    def _load(self) -> KeyFileState:
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise KeyFileError(f"cannot open key file {self._path}: {exc.strerror}") from None
        with open(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
                raise KeyFileError(
                    f"key file {self._path} is accessible to group or others; chmod 600 it"
                )
            raw = fh.read()
        try:
            state: KeyFileState = json.loads(raw)
            valid = state["current"] in state["keys"]
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            raise KeyFileError(f"key file {self._path} is malformed")
        return state

    def _store(self, state: KeyFileState) -> None:
        tmp = self._dir / f".kek.{secrets.token_hex(8)}.tmp"
        # Mode 0600 from creation, so the key never sits in a wider-open file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            with open(fd, "wb") as fh:
                fh.write(json.dumps(state, indent=1).encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self._dir)


def _new_state() -> KeyFileState:
    state: KeyFileState = {"format": 1, "keys": {}, "current": ""}
    state["current"] = _add_kek(state)
    return state


def _add_kek(state: KeyFileState) -> str:
    kid = f"kek-{secrets.token_hex(4)}"
    while kid in state["keys"]:
        kid = f"kek-{secrets.token_hex(4)}"
    state["keys"][kid] = base64.b64encode(get_random_bytes(32)).decode("ascii")
    return kid


def _decode_kek(state: KeyFileState, key_id: str) -> bytes:
    kek = base64.b64decode(state["keys"][key_id])
    if len(kek) != 32:
        raise KeyFileError("key file holds a KEK of the wrong length")
    return kek
