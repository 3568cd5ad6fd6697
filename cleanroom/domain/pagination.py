"""Opaque page tokens for List calls: the id of the last item of the previous page."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cleanroom.domain.errors import FieldViolation, bad_request

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class PageRequest:
    size: int
    after_id: str | None


def parse_page(page_size: int, page_token: str) -> PageRequest:
    if page_size < 0:
        raise bad_request("page_size must not be negative", FieldViolation("page_size", "must be 0 or more"))
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return PageRequest(size, None)
    try:
        after = base64.b64decode(page_token.encode("ascii"), altchars=b"-_", validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        after = ""
    if not after:
        raise bad_request("page_token is not one this server issued", FieldViolation("page_token", "malformed"))
    return PageRequest(size, after)


def next_page_token(ids: list[str], size: int) -> str:
    """A token when the page is full (there may be more), else the empty string."""
    if len(ids) < size or not ids:
        return ""
    return base64.urlsafe_b64encode(ids[-1].encode("utf-8")).decode("ascii")
