"""Bearer tokens as issued credentials: lifetime rules and whether a token works now (pure).

A token works iff its row exists, it is not revoked and it has not expired. Only the token's
SHA-256 is stored (cleanroom/domain/identity.py: hash_token); the token itself is derived from
the token root and shown once (cleanroom/identity/tokens.py).
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.identity import Principal

MIN_LIFETIME = timedelta(seconds=1)
MAX_LIFETIME = timedelta(days=3650)
EXPIRED_MESSAGE = "the bearer token has expired; ask an admin for a new one"


class TokenState(enum.Enum):
    VALID = "valid"
    UNKNOWN = "unknown"      # malformed, or no such token
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Token:
    """An issued token's public record: never the token, never its hash."""

    id: str
    principal_id: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    created_by: str

    @property
    def resource_name(self) -> str:
        return f"tokens/{self.id}"

    def state(self, now: datetime) -> TokenState:
        if self.revoked_at is not None:
            return TokenState.REVOKED
        if self.expires_at is not None and self.expires_at <= now:
            return TokenState.EXPIRED
        return TokenState.VALID


@dataclass(frozen=True)
class TokenCheck:
    """The answer to "who presents this token": the principal only when the state is VALID."""

    state: TokenState
    principal: Principal | None = None


UNKNOWN = TokenCheck(TokenState.UNKNOWN)


def new_token_id() -> str:
    return "t" + secrets.token_hex(8)


def check_lifetime(lifetime: timedelta | None, field: str = "lifetime") -> timedelta | None:
    """None: the token never expires. Otherwise 1 second to 10 years."""
    if lifetime is None:
        return None
    if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
        raise bad_request("a token lifetime must be between 1 second and 3650 days (leave it unset for no expiry)",
                          FieldViolation(field, "must be 1 s to 3650 days"))
    return lifetime


def expiry(created_at: datetime, lifetime: timedelta | None) -> datetime | None:
    return None if lifetime is None else created_at + lifetime
