"""Reading the audit trail: verify the chain, export it as JSON lines, scoped by organisation.

The rule for what a hospital reads (its officers, auditors and data owners alike): the entries
whose target is one of its organisation's datasets (deleted ones too, and the statistics answers
under them), one of its principals or the organisation itself, and the entries whose `dataset`
detail names one of its datasets (privacy requests and jobs on them). Never another hospital's
entries. The operator's officers and auditors read everything.

The chain stays verifiable for a hospital: every exported entry carries its own hash and its
predecessor's, so each can be re-hashed offline; VerifyAuditLog walks the whole chain on the
server (a break anywhere is reported, since it breaks trust in every later entry) but reports
the hospital's own count and its own latest entry as the head, to keep as an anchor for the next
verification. What a hospital learns of others is only that seq numbers between its entries exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cleanroom.domain.audit import GENESIS_HASH, Anchor, AuditEntry, ChainVerdict, verify_chain
from cleanroom.domain.identity import Principal, Role
from cleanroom.domain.organisations import platform_wide
from cleanroom.storage import audit_repo, dataset_repo, principal_repo
from cleanroom.storage.db import Database


@dataclass(frozen=True)
class AuditScope:
    """What one organisation may read of the audit trail."""

    dataset_ids: frozenset[str]
    targets: frozenset[str]  # its principals' and its own resource names

    def sees(self, entry: AuditEntry) -> bool:
        kind, _, rest = entry.target.partition("/")
        if kind == "datasets" and rest.split("/", 1)[0] in self.dataset_ids:
            return True
        return entry.target in self.targets or entry.details.get("dataset") in self.dataset_ids


class AuditService:
    def __init__(self, db: Database) -> None:
        self._db = db

    def scope(self, principal: Principal) -> AuditScope | None:
        """None: everything (the operator's oversight). A data owner made before organisations
        (tests only) reads the entries about its own uploads."""
        if principal.role is not Role.DATA_OWNER and platform_wide(principal.organisation_id):
            return None
        with self._db.read() as session:
            if principal.role is Role.DATA_OWNER and not principal.organisation_id:
                return AuditScope(frozenset(dataset_repo.owned_dataset_ids(session, principal.id)), frozenset())
            organisation = principal.organisation_id
            datasets = dataset_repo.organisation_dataset_ids(session, organisation, deleted_too=True)
            people = principal_repo.organisation_principal_ids(session, organisation)
        targets = {f"principals/{p}" for p in people} | {f"organisations/{organisation}"}
        return AuditScope(frozenset(datasets), frozenset(targets))

    def verify(self, anchor: Anchor | None = None, principal: Principal | None = None) -> ChainVerdict:
        """The whole chain's verdict; for a hospital (see the module docstring), counted over its own entries."""
        scope = self.scope(principal) if principal is not None else None
        with self._db.read() as session:
            stored_head = audit_repo.head(session)
            if scope is None:
                return verify_chain(audit_repo.entries(session), stored_head=stored_head, anchor=anchor)
            tally = _Tally(scope)
            verdict = verify_chain(tally.walk(audit_repo.entries(session)), stored_head=stored_head, anchor=anchor)
        return ChainVerdict(verdict.ok, tally.count, tally.last, verdict.first_bad_seq, verdict.problem)

    def export(self, principal: Principal, *, after_seq: int = 0) -> Iterator[AuditEntry]:
        """The entries the principal's scope reads, in order. Each page is read in its own short
        transaction, so a long export holds no lock."""
        scope = self.scope(principal)
        while True:
            with self._db.transaction() as session:
                batch = audit_repo.page(session, after_seq=after_seq)
            yield from (entry for entry in batch if scope is None or scope.sees(entry))
            if len(batch) < audit_repo.PAGE:
                return
            after_seq = batch[-1].seq


class _Tally:
    """Counts the entries a scope sees while the chain is walked, and remembers the last one."""

    def __init__(self, scope: AuditScope) -> None:
        self._scope = scope
        self.count = 0
        self.last = Anchor(0, GENESIS_HASH)

    def walk(self, entries: Iterable[AuditEntry]) -> Iterator[AuditEntry]:
        for entry in entries:
            if self._scope.sees(entry):
                self.count += 1
                self.last = Anchor(entry.seq, entry.hash)
            yield entry
