"""Canonical JSON, hashing and time helpers: every signature covers bytes with exactly one spelling.

Canonical JSON here is: objects with string keys sorted by code point, no insignificant
whitespace, UTF-8 without escaping non-ASCII, and only strings, integers, booleans, null, lists and
objects. Floats are refused because their text form is not stable across languages and
libraries; state fractional values as decimal strings (see `decimal_text`). A parser accepts only
bytes that re-encode to themselves, so two byte strings never carry the same statement.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeGuard

from enclave_sim.errors import EnclaveSimError, Reason

_TIME_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_DECIMAL_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")
_LOWER_HEX = re.compile(r"[0-9a-f]*")


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 bytes of `value`; TypeError for floats, non-string keys and the like."""
    text = json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def plain_copy(value: Any) -> Any:
    """A detached copy of `value` as dicts, lists and scalars; TypeError for what has no canonical form."""
    return _plain(value)


def _plain(value: Any) -> Any:
    """`value` as dicts, lists and scalars only, refusing what has no canonical form."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        raise TypeError("floats have no canonical form here; use an integer or decimal_text()")
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise TypeError("object keys must be strings")
        return {key: _plain(item) for key, item in value.items()}
    raise TypeError(f"{type(value).__name__} has no canonical JSON form")


def parse_canonical(data: bytes) -> Any:
    """Parse canonical JSON; anything else (whitespace, floats, duplicate keys...) is MALFORMED."""
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys, parse_float=_no_float, parse_constant=_no_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EnclaveSimError(Reason.MALFORMED, f"not canonical JSON ({type(exc).__name__})") from None
    if canonical_json(value) != data:
        raise EnclaveSimError(Reason.MALFORMED, "JSON is valid but not in canonical form")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate object key")
    return result


def _no_float(text: str) -> Any:
    raise ValueError("floats are not canonical")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_hex(value: Any, nbytes: int) -> TypeGuard[str]:
    """Lower-case hex of exactly `nbytes` bytes (upper case would give a second spelling)."""
    return isinstance(value, str) and len(value) == 2 * nbytes and _LOWER_HEX.fullmatch(value) is not None


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with whole seconds, e.g. 2026-05-09T07:35:25Z."""
    if moment.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(text: Any) -> datetime:
    if not isinstance(text, str) or not _TIME_PATTERN.fullmatch(text):
        raise EnclaveSimError(Reason.MALFORMED, "time is not RFC 3339 UTC with whole seconds")
    try:
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise EnclaveSimError(Reason.MALFORMED, "time is not a valid date") from None


def utc_now() -> datetime:
    """Now, truncated to whole seconds so that it survives format_time/parse_time unchanged."""
    return datetime.now(UTC).replace(microsecond=0)


def decimal_text(value: float | int | str | Decimal) -> str:
    """A finite, non-negative number as a plain decimal string ("0.5", "3", "1e-05" -> "0.00001").

    Floats go through repr (the shortest text that round-trips), so the same float always gives
    the same string.
    """
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("number must be finite")
    try:
        number = Decimal(repr(value) if isinstance(value, float) else str(value))
    except InvalidOperation:
        raise ValueError("not a decimal number") from None
    if not number.is_finite() or number < 0:
        raise ValueError("number must be finite and non-negative")
    text = format(number, "f")
    return text if _DECIMAL_PATTERN.fullmatch(text) else str(int(number))


def is_decimal_text(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and _DECIMAL_PATTERN.fullmatch(value) is not None
