"""Principals and their bearer tokens.

A token is derived, not stored: HMAC(token root, principal id). Only its SHA-256 is kept, for
lookup. Deriving lets a retried CreatePrincipal (same request_id) answer with the same token
without the token ever being written down.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request
from cleanroom.domain.identity import TOKEN_PREFIX, Principal, Role, hash_token, new_principal_id
from cleanroom.domain.pagination import PageRequest
from cleanroom.identity.keyring import TOKEN_ROOT, KeyService
from cleanroom.storage import audit_repo, clock, principal_repo
from cleanroom.storage.db import Database

MAX_DISPLAY_NAME = 200
# Principals are never edited in place, so a cached principal is never stale; when revocation
# arrives, it must clear this cache (a revoked token then stops working within CACHE_SECONDS anyway).
CACHE_SECONDS = 30.0
CACHE_ENTRIES = 10_000


class PrincipalService:
    def __init__(self, db: Database, keys: KeyService) -> None:
        self._db = db
        self._keys = keys
        self._cache: dict[str, tuple[Principal, float]] = {}

    def token_for(self, principal_id: str) -> str:
        mac = hmac.new(self._keys.secret(TOKEN_ROOT), principal_id.encode("ascii"), hashlib.sha256).digest()
        return TOKEN_PREFIX + base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")

    def create(self, display_name: str, role: Role, *, actor: str) -> tuple[Principal, str]:
        """`actor` is the creating admin's resource name, or \"local-bootstrap\" for the first admin."""
        _check_display_name(display_name)
        principal = Principal(new_principal_id(), display_name.strip(), role, clock.now())
        token = self.token_for(principal.id)
        with self._db.transaction() as session:
            principal_repo.add_principal(session, principal, hash_token(token))
            audit_repo.append(session, actor=actor, action="principal.create", target=principal.resource_name,
                              details={"role": role.value})
        return principal, token

    def authenticate(self, token: str) -> Principal | None:
        """Every call authenticates; a short cache keeps that off the database's hot path."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        token_hash = hash_token(token)
        cached = self._cache.get(token_hash)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        with self._db.read() as session:
            principal = principal_repo.principal_by_token_hash(session, token_hash)
        if principal is not None:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[token_hash] = (principal, time.monotonic() + CACHE_SECONDS)
        return principal

    def get(self, principal_id: str) -> Principal:
        with self._db.read() as session:
            principal = principal_repo.get_principal(session, principal_id)
        if principal is None:
            raise CleanroomError(ErrorCode.NOT_FOUND, "principal not found")
        return principal

    def list(self, page: PageRequest) -> list[Principal]:
        with self._db.read() as session:
            return principal_repo.list_principals(session, after_id=page.after_id, limit=page.size)


def _check_display_name(display_name: str) -> None:
    name = display_name.strip()
    if not name or len(name) > MAX_DISPLAY_NAME or not name.isprintable():
        raise bad_request(
            "display_name must be 1 to 200 printable characters",
            FieldViolation("display_name", "empty, too long or not printable"),
        )
