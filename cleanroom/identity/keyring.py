"""Key management: dataset keys and service secrets wrapped by the KEK, and KEK rotation."""

from __future__ import annotations

import hashlib
import hmac
import threading

from sqlalchemy.orm import Session

from cleanroom import crypto
from cleanroom.crypto import KeyProvider, WrappedKey
from cleanroom.storage import audit_repo, dataset_repo, model_repo, secret_repo
from cleanroom.storage.db import Database

PSEUDONYM_ROOT = "pseudonym-root"
TOKEN_ROOT = "token-root"
# The one platform-wide key of linkage pseudonyms (cleanroom.datasets.pseudonyms.LinkagePseudonymizer):
# the same at every hospital, so the same person links; held by the service only, never derived
# from a hospital's or a manufacturer's key.
LINKAGE_KEY = "linkage-key"
# The root of each data owner's stream time-shift key (cleanroom.datasets.stream_cells.shift_days):
# a patient's secret whole-day offset is a keyed hash of its pseudonym under it.
TIME_SHIFT_ROOT = "time-shift-root"


def _dataset_context(dataset_id: str) -> bytes:
    return b"dataset-key:" + dataset_id.encode("ascii")


def model_context(model_id: str) -> str:
    return f"model:{model_id}"


def _secret_context(name: str) -> bytes:
    return b"service-secret:" + name.encode("ascii")


class KeyService:
    def __init__(self, db: Database, provider: KeyProvider) -> None:
        self._db = db
        self._provider = provider
        self._lock = threading.Lock()
        self._secrets: dict[str, bytes] = {}

    def wrap_dataset_key(self, dataset_id: str, data_key: bytes) -> bytes:
        return self._provider.wrap(data_key, context=_dataset_context(dataset_id)).to_bytes()

    def unwrap_dataset_key(self, dataset_id: str, wrapped: bytes) -> bytes:
        return self._provider.unwrap(WrappedKey.from_bytes(wrapped), context=_dataset_context(dataset_id))

    def wrap_key(self, context: str, key: bytes) -> bytes:
        """Any other sealed object's key (model artifacts, job outputs), bound to its context."""
        return self._provider.wrap(key, context=context.encode("ascii")).to_bytes()

    def unwrap_key(self, context: str, wrapped: bytes) -> bytes:
        return self._provider.unwrap(WrappedKey.from_bytes(wrapped), context=context.encode("ascii"))

    def secret(self, name: str) -> bytes:
        """A 256-bit service secret, created on first use and kept wrapped in the database."""
        with self._lock:
            if name not in self._secrets:
                self._secrets[name] = self._load_or_create(name)
            return self._secrets[name]

    def _load_or_create(self, name: str) -> bytes:
        # Replicas starting together may all find no secret: each offers one, the database keeps the
        # first, and the others read that one back (one secret, whoever created it).
        wrapped = self._stored_secret(name)
        if wrapped is None:
            value = crypto.new_data_key()
            if secret_repo.create_secret(self._db, name, self._provider.wrap(value, context=_secret_context(name)).to_bytes()):
                return value
            wrapped = self._stored_secret(name)
            if wrapped is None:
                raise RuntimeError(f"the service secret {name} was neither stored nor found")
        return self._provider.unwrap(WrappedKey.from_bytes(wrapped), context=_secret_context(name))

    def _stored_secret(self, name: str) -> bytes | None:
        with self._db.read() as session:
            return secret_repo.get_secret(session, name)

    def pseudonym_key(self, owner_id: str) -> bytes:
        """Per-hospital HMAC key: one hospital's pseudonyms cannot be joined with another's."""
        root = self.secret(PSEUDONYM_ROOT)
        return hmac.new(root, b"pseudonym:" + owner_id.encode("ascii"), hashlib.sha256).digest()

    def linkage_key(self) -> bytes:
        """The platform-wide linkage key: one for every hospital, unlike pseudonym_key."""
        return self.secret(LINKAGE_KEY)

    def time_shift_key(self, owner_id: str) -> bytes:
        """Per-hospital key of stream time shifts, apart from pseudonym_key: knowing a patient's
        pseudonym does not give its shift."""
        root = self.secret(TIME_SHIFT_ROOT)
        return hmac.new(root, b"time-shift:" + owner_id.encode("ascii"), hashlib.sha256).digest()

    def rotate(self, *, actor: str) -> tuple[str, int]:
        """New KEK; every wrapped key re-wrapped in one transaction; then the old KEKs are retired.

        A crash before the retire step leaves the old KEK in the key file, so nothing becomes
        unreadable; the next rotation retires it.
        """
        with self._lock:
            new_id = self._provider.rotate()
            with self._db.transaction() as session:
                count = self._rewrap_all(session)
                audit_repo.append(session, actor=actor, action="keys.rotate", target="keys/kek",
                                  details={"key_id": new_id, "rewrapped": count})
            for key_id in self._provider.key_ids():
                if key_id != new_id:
                    self._provider.retire(key_id)
            return new_id, count

    def _rewrap_all(self, session: Session) -> int:
        count = 0
        for dataset_id, wrapped in dataset_repo.live_wrapped_keys(session):
            fresh = crypto.rewrap(self._provider, WrappedKey.from_bytes(wrapped), context=_dataset_context(dataset_id))
            dataset_repo.set_wrapped_dataset_key(session, dataset_id, fresh.to_bytes())
            count += 1
        for model_id, wrapped in model_repo.live_wrapped_keys(session):
            fresh = crypto.rewrap(self._provider, WrappedKey.from_bytes(wrapped), context=model_context(model_id).encode("ascii"))
            model_repo.set_wrapped_key(session, model_id, fresh.to_bytes())
            count += 1
        for name, wrapped in secret_repo.all_secrets(session):
            fresh = crypto.rewrap(self._provider, WrappedKey.from_bytes(wrapped), context=_secret_context(name))
            secret_repo.put_secret(session, name, fresh.to_bytes())
            count += 1
        return count
