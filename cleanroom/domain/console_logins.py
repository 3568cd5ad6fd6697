"""Console logins: a username and a password (or a one-time code) bound to one principal (pure).

The web console (cleanroom/console) signs a person in by exchanging these for a short-lived bearer
token of the principal; from then on the console is an ordinary API client, so every role and
organisation rule is the API's own. Passwords are kept as scrypt hashes; one-time codes, like
tokens, are derived from the token root and only their hash is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cleanroom.domain.errors import FieldViolation, bad_request

USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{2,63}")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
CODE_LIFETIME = timedelta(hours=24)
# A console session's token lives at most this long; the console ends idle sessions much sooner.
SESSION_LIFETIME = timedelta(hours=8)
WRONG_CREDENTIALS = "the username or the password is wrong"
# scrypt's cost: about 50 ms and 16 MiB per guess here (N = 2^14, r = 8: the interactive-login setting).
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


@dataclass(frozen=True)
class ConsoleLogin:
    id: str
    username: str
    principal_id: str
    created_at: datetime
    password_set: bool


def new_login_id() -> str:
    return "l" + secrets.token_hex(8)


def check_username(username: str, field: str = "username") -> str:
    if not USERNAME.fullmatch(username):
        raise bad_request("a console username is 3 to 64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
                          FieldViolation(field, "not a valid username"))
    return username


def check_password(password: str, field: str = "new_password") -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise bad_request(f"a console password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long",
                          FieldViolation(field, f"must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"))
    return password


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def password_matches(password: str, stored: str | None) -> bool:
    """Constant-time check; a login without a password (or a malformed record) matches nothing."""
    if not stored or len(password) > MAX_PASSWORD:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                                   dklen=len(bytes.fromhex(digest)))
    except ValueError:
        return False
    return hmac.compare_digest(candidate.hex(), digest)


def tokens_hash_match(code: str, stored_hash: str | None) -> bool:
    return stored_hash is not None and hmac.compare_digest(hashlib.sha256(code.encode("ascii")).hexdigest(), stored_hash)


# Spent on an unknown username too, so a wrong username takes as long as a wrong password.
DUMMY_HASH = hash_password("not-a-password", salt=b"\0" * 16)
