"""Strict readers for signed statements: exact key sets, typed fields, one spelling per value."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from enclave_sim.canonical import is_decimal_text, is_hex, parse_time
from enclave_sim.errors import EnclaveSimError, Reason


def malformed(detail: str) -> EnclaveSimError:
    return EnclaveSimError(Reason.MALFORMED, detail)


def check_relative_path(name: Any) -> str:
    """A relative POSIX path with no '.', '..' or empty parts: one spelling per file everywhere."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise ValueError(f"not a relative POSIX path: {name!r}")
    parts = name.split("/")
    if PurePosixPath(name).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a normalised relative path: {name!r}")
    return name


class FieldReader:
    """Reads one JSON object whose keys must be exactly `expected`; errors are MALFORMED."""

    def __init__(self, obj: Any, expected: set[str], what: str) -> None:
        if not isinstance(obj, dict):
            raise malformed(f"{what} is not an object")
        if set(obj) != expected:
            raise malformed(f"{what} fields differ: missing {sorted(expected - set(obj))}, unexpected {sorted(set(obj) - expected)}")
        self._obj = obj
        self._what = what

    def raw(self, key: str) -> Any:
        return self._obj[key]

    def hex(self, key: str, nbytes: int) -> str:
        value = self._obj[key]
        if not is_hex(value, nbytes):
            raise malformed(f"{self._what}.{key} is not {nbytes} bytes of lower-case hex")
        return value

    def text(self, key: str) -> str:
        value = self._obj[key]
        if not isinstance(value, str) or not value:
            raise malformed(f"{self._what}.{key} is not a non-empty string")
        return value

    def decimal(self, key: str) -> str:
        value = self._obj[key]
        if not is_decimal_text(value):
            raise malformed(f"{self._what}.{key} is not a non-negative decimal string")
        return value

    def time(self, key: str) -> datetime:
        return parse_time(self._obj[key])

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._obj[key]
        if not isinstance(value, Mapping):
            raise malformed(f"{self._what}.{key} is not an object")
        return dict(value)

    def digest_map(self, key: str) -> dict[str, str]:
        """An object of relative file name -> sha256 hex."""
        files = self.mapping(key)
        for name, digest in files.items():
            try:
                check_relative_path(name)
            except ValueError:
                raise malformed(f"{self._what}.{key} has a bad file name") from None
            if not is_hex(digest, 32):
                raise malformed(f"{self._what}.{key} has a digest that is not sha256 hex")
        return files
