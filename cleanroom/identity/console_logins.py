"""Console logins: create one for a principal, sign in with it, set its password, sign out.

Signing in issues an ordinary bearer token (identity/tokens.py) with a short lifetime, so the web
console is an API client like any other and a revocation holds on its next call. Failed sign-ins
are limited per username, in this process's memory (per replica, as the source-address limiter):
the console signs everyone in from one address, so a per-address limit would lock all its users out.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from cleanroom.domain import console_logins as rules
from cleanroom.domain.console_logins import ConsoleLogin, check_password, check_username
from cleanroom.domain.credentials import Token
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.identity import Principal, hash_token
from cleanroom.identity.ratelimit import FailureLimiter
from cleanroom.identity.tokens import PRINCIPAL_NOT_FOUND, TOKEN_NOT_FOUND, TokenService
from cleanroom.storage import audit_repo, clock, console_login_repo, principal_repo, token_repo
from cleanroom.storage.db import Database
from cleanroom.storage.tables import ConsoleLoginRow

USERNAME_TAKEN = "that username is taken by another principal's console login"
NO_LOGIN = "you have no console login; ask an admin for one (`cleanroom admin console-login`)"
RATE_LIMITED = "too many failed sign-ins for this username; retry after the delay in RetryInfo"


class ConsoleLoginService:
    def __init__(self, db: Database, tokens: TokenService, *, now: Callable[[], datetime] = clock.now,
                 limiter: FailureLimiter | None = None) -> None:
        self._db = db
        self._tokens = tokens
        self.now = now
        self._limiter = limiter or FailureLimiter(limit=10, window=300.0)

    def code_of(self, login_id: str, generation: int) -> str:
        """A login's one-time code: derived, so a retried CreateConsoleLogin shows it without storing it."""
        return self._tokens.derive(f"console-code/{login_id}/{generation}")

    def create(self, principal_id: str, username: str, *, actor: str) -> tuple[ConsoleLogin, str, datetime]:
        """The principal's login (made, or given a fresh one-time code); (login, code, code expiry)."""
        check_username(username)
        with self._db.transaction() as session:
            if principal_repo.get_principal(session, principal_id) is None:
                raise CleanroomError(ErrorCode.NOT_FOUND, PRINCIPAL_NOT_FOUND)
            row = console_login_repo.by_principal(session, principal_id, for_update=True)
            taken = console_login_repo.by_username(session, username)
            if taken is not None and taken.principal_id != principal_id:
                raise CleanroomError(ErrorCode.FAILED_PRECONDITION, USERNAME_TAKEN)
            at = self.now()
            if row is None:
                row = ConsoleLoginRow(id=rules.new_login_id(), principal_id=principal_id, username=username,
                                      code_generation=0, created_at=at, created_by=actor)
                console_login_repo.add(session, row)
            row.username = username
            row.code_generation += 1
            code = self.code_of(row.id, row.code_generation)
            row.code_hash = hash_token(code)
            row.code_expires_at = at + rules.CODE_LIFETIME
            audit_repo.append(session, actor=actor, action="console_login.create", target=f"principals/{principal_id}",
                              details={"username": username})
            return console_login_repo.public(row), code, row.code_expires_at

    def current_code(self, principal_id: str) -> tuple[ConsoleLogin, str, datetime | None]:
        """For a retried CreateConsoleLogin: the login and its current code."""
        with self._db.read() as session:
            row = console_login_repo.by_principal(session, principal_id)
            if row is None:
                raise CleanroomError(ErrorCode.NOT_FOUND, PRINCIPAL_NOT_FOUND)
            return console_login_repo.public(row), self.code_of(row.id, row.code_generation), row.code_expires_at

    def sign_in(self, username: str, *, password: str | None, code: str | None) -> tuple[Token, str, Principal, bool]:
        """(token record, bearer token, principal, must set a password) or UNAUTHENTICATED."""
        wait = self._limiter.blocked(username)
        if wait is not None:
            raise CleanroomError(ErrorCode.AUTH_RATE_LIMITED, RATE_LIMITED, retry_after=wait)
        with self._db.transaction() as session:
            row = console_login_repo.by_username(session, username, for_update=True)
            matched = self._matches(row, password, code)
            if row is None or not matched:
                self._limiter.failed(username)
                raise CleanroomError(ErrorCode.UNAUTHENTICATED, rules.WRONG_CREDENTIALS)
            if code is not None:
                row.code_hash = None  # one time: the code is spent by this sign-in
            principal_id, must_set = row.principal_id, code is not None or row.password_hash is None
            audit_repo.append(session, actor=f"principals/{principal_id}", action="console.sign_in",
                              target=f"principals/{principal_id}", details={"username": username, "with": "code" if code else "password"})
        token = self._tokens.issue(principal_id, rules.SESSION_LIFETIME, actor=f"console-sign-in:{username}")
        with self._db.read() as session:
            principal = principal_repo.get_principal(session, principal_id)
        assert principal is not None
        return token, self._tokens.secret_of(token.id), principal, must_set

    def _matches(self, row: ConsoleLoginRow | None, password: str | None, code: str | None) -> bool:
        if row is None:
            rules.password_matches(password or "", rules.DUMMY_HASH)  # same time as a wrong password
            return False
        if code is not None:
            live = row.code_hash is not None and row.code_expires_at is not None and row.code_expires_at > self.now()
            return live and code.isascii() and rules.tokens_hash_match(code, row.code_hash)
        return rules.password_matches(password or "", row.password_hash)

    def set_password(self, principal: Principal, new_password: str) -> ConsoleLogin:
        check_password(new_password)
        hashed = rules.hash_password(new_password)
        with self._db.transaction() as session:
            row = console_login_repo.by_principal(session, principal.id, for_update=True)
            if row is None:
                raise CleanroomError(ErrorCode.FAILED_PRECONDITION, NO_LOGIN)
            row.password_hash = hashed
            audit_repo.append(session, actor=principal.resource_name, action="console_login.set_password",
                              target=principal.resource_name, details={"username": row.username})
            return console_login_repo.public(row)

    def sign_out(self, principal: Principal, token_id: str) -> None:
        """Revokes the caller's own session token; another's is answered as missing."""
        with self._db.read() as session:
            record = token_repo.get_token(session, token_id)
        if record is None or record.principal_id != principal.id:
            raise CleanroomError(ErrorCode.NOT_FOUND, TOKEN_NOT_FOUND)
        self._tokens.revoke(token_id, actor=principal.resource_name)
