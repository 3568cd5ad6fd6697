"""VerifyAuditLog's break, told at once: the audit service the API is given, with one addition."""

from __future__ import annotations

from collections.abc import Callable

from cleanroom.domain.audit import Anchor, ChainVerdict
from cleanroom.domain.identity import Principal
from cleanroom.privacy.audit import AuditService
from cleanroom.storage.db import Database


class WatchedAuditService(AuditService):
    """An AuditService whose verify() calls `on_break` when the chain does not verify; `on_break`
    queues the notification and never raises, so the caller gets its verdict either way."""

    def __init__(self, db: Database, on_break: Callable[[], None]) -> None:
        super().__init__(db)
        self._on_break = on_break

    def verify(self, anchor: Anchor | None = None, principal: Principal | None = None) -> ChainVerdict:
        verdict = super().verify(anchor, principal)
        if not verdict.ok:
            self._on_break()
        return verdict
