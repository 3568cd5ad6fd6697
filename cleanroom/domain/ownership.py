"""Tenant isolation for reads: another principal's item is reported exactly like a missing one."""

from __future__ import annotations

from typing import Protocol, TypeVar

from cleanroom.domain.errors import CleanroomError, ErrorCode


class Owned(Protocol):
    @property
    def owner_id(self) -> str: ...


T = TypeVar("T", bound=Owned)


def owned_or_not_found(item: T | None, owner_id: str, message: str) -> T:
    """`item` when `owner_id` owns it; otherwise NOT_FOUND with `message`, the same answer a missing
    item gets, so one manufacturer never learns that another's models or jobs exist."""
    if item is None or item.owner_id != owner_id:
        raise CleanroomError(ErrorCode.NOT_FOUND, message)
    return item
