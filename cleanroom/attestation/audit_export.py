"""Signing an audit export for a regulator with the service's attestation key (see domain/audit_export.py).

The key is the one that signs receipts, certified by the trust root the regulator pins; the
statement type keeps an export's signature from being presented as a receipt's, or the reverse.
Each signed export is itself audited: who exported what, and when.
"""

from __future__ import annotations

from dataclasses import dataclass

import enclave_sim
from cleanroom.domain.audit import GENESIS_HASH
from cleanroom.domain.audit_export import ExportSummary, entries_digest
from cleanroom.domain.identity import Principal
from cleanroom.privacy.audit import AuditService
from cleanroom.storage import audit_repo, clock
from cleanroom.storage.db import Database


@dataclass(frozen=True)
class SignedExport:
    statement: bytes      # canonical JSON envelope of the summary's payload
    certificate: bytes    # the signing key's certificate, canonical JSON
    summary: ExportSummary


class AuditExportSigner:
    def __init__(self, db: Database, audit: AuditService, key: enclave_sim.AttestationKey) -> None:
        self._db = db
        self._audit = audit
        self._key = key

    def sign(self, principal: Principal, through_seq: int = 0) -> SignedExport:
        """Signs the principal's view of the log up to `through_seq` (0: everything now)."""
        lines, first_seq, last_seq, last_hash = [], 0, 0, GENESIS_HASH
        for entry in self._audit.export(principal):
            if through_seq and entry.seq > through_seq:
                break
            lines.append(entry.to_json())
            first_seq = first_seq or entry.seq
            last_seq, last_hash = entry.seq, entry.hash
        verdict = self._audit.verify(principal=principal)
        summary = ExportSummary(
            exporter=f"principals/{principal.id}", organisation=principal.organisation_id,
            exported_at=enclave_sim.format_time(clock.now()), entries=len(lines), entries_sha256=entries_digest(lines),
            first_seq=first_seq, last_seq=last_seq, last_hash=last_hash, chain_verified=verdict.ok,
            first_bad_seq=verdict.first_bad_seq)
        statement = self._key.signed_envelope(summary.payload())
        certificate = enclave_sim.canonical_json(self._key.certificate.to_json())
        with self._db.transaction() as session:
            audit_repo.append(session, actor=f"principals/{principal.id}", action="audit.export_signed",
                              target=f"principals/{principal.id}",
                              details={"entries": len(lines), "last_seq": last_seq, "chain_verified": verdict.ok})
        return SignedExport(statement, certificate, summary)

