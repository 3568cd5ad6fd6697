"""The service's clock: timezone-aware UTC, the time every stored row is stamped with."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)
