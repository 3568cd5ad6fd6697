"""Bearer tokens: issue, revoke, list, and check the one a call presents.

A token is derived, never stored: HMAC(token root, subject), where the subject is the principal id
for the token made with the principal and "tokens/{id}" for one issued later. Only its SHA-256 is
kept (`tokens.token_hash`), so a retried CreatePrincipal or IssueToken (same request_id) answers
with the same token without the token ever being written down.

Every call is checked against the database, with no cache: a revoked token fails on the next call,
on every replica (the statement is one indexed lookup on the driver's cursor; the cost is measured
in the credentials proof, proof/credentials.py). Expiry is judged by this process's clock
(`now`, injected so tests move it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from cleanroom.domain.credentials import UNKNOWN, Token, TokenCheck, TokenState, check_lifetime, expiry, new_token_id
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.identity import TOKEN_PREFIX, Principal, hash_token
from cleanroom.domain.pagination import PageRequest
from cleanroom.identity.keyring import TOKEN_ROOT, KeyService
from cleanroom.storage import audit_repo, clock, principal_repo, token_repo
from cleanroom.storage.db import Database

TOKEN_NOT_FOUND = "token not found"
PRINCIPAL_NOT_FOUND = "principal not found"
LOCK_OUT = ("revoking this would leave no admin with a working token: issue another admin token first "
            "(`cleanroom admin token issue --principal principals/ID`)")


class TokenService:
    def __init__(self, db: Database, keys: KeyService, now: Callable[[], datetime] = clock.now) -> None:
        self._db = db
        self._keys = keys
        self.now = now

    def derive(self, subject: str) -> str:
        mac = hmac.new(self._keys.secret(TOKEN_ROOT), subject.encode("ascii"), hashlib.sha256).digest()
        return TOKEN_PREFIX + base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")

    def secret_of(self, token_id: str) -> str:
        """The bearer token of an issued token (not of a principal's first one: `derive(principal id)`)."""
        return self.derive(f"tokens/{token_id}")

    def record_first(self, session: Session, principal: Principal, token: str, lifetime: timedelta | None, actor: str) -> Token:
        """The token made with a principal, in the creating transaction."""
        at = self.now()
        record = Token(new_token_id(), principal.id, at, expiry(at, lifetime), None, actor)
        token_repo.add_token(session, record, hash_token(token))
        return record

    def issue(self, principal_id: str, lifetime: timedelta | None, *, actor: str) -> Token:
        """A new token for an existing principal; its bearer token is `secret_of(token.id)`."""
        lifetime = check_lifetime(lifetime)
        token_id = new_token_id()
        token_hash = hash_token(self.secret_of(token_id))  # before the transaction: the token root may be made in one of its own
        with self._db.transaction() as session:
            principal = principal_repo.get_principal(session, principal_id)
            if principal is None:
                raise CleanroomError(ErrorCode.NOT_FOUND, PRINCIPAL_NOT_FOUND)
            at = self.now()
            record = Token(token_id, principal_id, at, expiry(at, lifetime), None, actor)
            token_repo.add_token(session, record, token_hash)
            audit_repo.append(session, actor=actor, action="token.issue", target=record.resource_name,
                              details={"principal": principal.resource_name,
                                       "expires": record.expires_at.isoformat() if record.expires_at else None})
        return record

    def revoke(self, token_id: str, *, actor: str) -> Token:
        """Revokes one token; one already revoked is answered as it is (nothing changes, nothing is audited)."""
        with self._db.transaction() as session:
            if token_repo.get_token(session, token_id) is None:
                raise CleanroomError(ErrorCode.NOT_FOUND, TOKEN_NOT_FOUND)
            self._revoke(session, [token_id], actor)
            record = token_repo.get_token(session, token_id)
        assert record is not None
        return record

    def revoke_principal(self, principal_id: str, *, actor: str) -> list[Token]:
        """Revokes every token of a principal; returns those this call revoked."""
        with self._db.transaction() as session:
            if principal_repo.get_principal(session, principal_id) is None:
                raise CleanroomError(ErrorCode.NOT_FOUND, PRINCIPAL_NOT_FOUND)
            revoked = self._revoke(session, token_repo.principal_token_ids(session, principal_id), actor)
            records = [token_repo.get_token(session, token_id) for token_id in revoked]
        return [r for r in records if r is not None]

    def _revoke(self, session: Session, token_ids: list[str], actor: str) -> list[str]:
        at = self.now()
        revoked = token_repo.revoke(session, token_ids, at)
        for token_id in revoked:
            record = token_repo.get_token(session, token_id)
            assert record is not None
            audit_repo.append(session, actor=actor, action="token.revoke", target=record.resource_name,
                              details={"principal": f"principals/{record.principal_id}"})
        # Counted after the audit append, which locks the chain's head: revocations are serialised
        # there, so two admins revoking each other's last tokens at once cannot both pass.
        if revoked and token_repo.live_admin_tokens(session, at) == 0:
            raise CleanroomError(ErrorCode.FAILED_PRECONDITION, LOCK_OUT)
        return revoked

    def list(self, principal_id: str | None, page: PageRequest) -> list[Token]:
        with self._db.read() as session:
            if principal_id is not None and principal_repo.get_principal(session, principal_id) is None:
                raise CleanroomError(ErrorCode.NOT_FOUND, PRINCIPAL_NOT_FOUND)
            return token_repo.list_tokens(session, principal_id=principal_id, after_id=page.after_id, limit=page.size)

    def check(self, token: str) -> TokenCheck:
        """Who presents `token`, and whether it works now (VALID) or why not."""
        if not token.startswith(TOKEN_PREFIX):
            return UNKNOWN
        found = token_repo.token_by_hash(self._db.lookup(), hash_token(token))
        if found is None:
            return UNKNOWN
        record, principal = found
        state = record.state(self.now())
        return TokenCheck(state, principal if state is TokenState.VALID else None)
