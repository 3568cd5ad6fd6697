"""Reading the audit trail: verify the chain, export it as JSON lines, filtered by role."""

from __future__ import annotations

from collections.abc import Iterator

from cleanroom.domain.audit import Anchor, AuditEntry, ChainVerdict, verify_chain
from cleanroom.domain.identity import Principal, Role
from cleanroom.storage import audit_repo, dataset_repo
from cleanroom.storage.db import Database


class AuditService:
    def __init__(self, db: Database) -> None:
        self._db = db

    def verify(self, anchor: Anchor | None = None) -> ChainVerdict:
        with self._db.read() as session:
            stored_head = audit_repo.head(session)
            return verify_chain(audit_repo.entries(session), stored_head=stored_head, anchor=anchor)

    def export(self, principal: Principal, *, after_seq: int = 0) -> Iterator[AuditEntry]:
        """Officers and auditors read everything; a hospital reads the entries about its datasets.

        Each page is read in its own short transaction, so a long export holds no lock.
        """
        targets = None
        if principal.role is Role.DATA_OWNER:
            with self._db.read() as session:
                targets = {f"datasets/{i}" for i in dataset_repo.owned_dataset_ids(session, principal.id)}
        while True:
            with self._db.transaction() as session:
                batch = audit_repo.page(session, after_seq=after_seq, targets=targets)
            yield from batch
            if len(batch) < audit_repo.PAGE:
                return
            after_seq = batch[-1].seq
