"""Principals, roles and bearer tokens (pure: no transport or storage)."""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

TOKEN_PREFIX = "crt_"


class Role(enum.Enum):
    DATA_OWNER = "data_owner"
    MANUFACTURER = "manufacturer"
    PRIVACY_OFFICER = "privacy_officer"
    AUDITOR = "auditor"
    ADMIN = "admin"


ALL_ROLES = frozenset(Role)


@dataclass(frozen=True)
class Principal:
    id: str
    display_name: str
    role: Role
    created_at: datetime
    # The organisation it belongs to (cleanroom/domain/organisations.py); "" only in tests that predate them.
    organisation_id: str = ""

    @property
    def resource_name(self) -> str:
        return f"principals/{self.id}"


def new_principal_id() -> str:
    return "p" + secrets.token_hex(8)


def new_token() -> str:
    """A random bearer token; 256 bits of entropy, so a plain SHA-256 is a safe stored form."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tokens_match(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)
