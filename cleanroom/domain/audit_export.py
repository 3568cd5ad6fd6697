"""A signed audit export for a regulator (pure): what the service signs over an export.

The export is the caller's entries as canonical JSON lines (what ExportAuditLog streams). The
statement binds exactly those lines (their count and SHA-256, the first and last seq, the last
entry's hash, which itself commits to the chain before it), the chain's verdict when exported, the
time and the exporter. It is signed like a receipt, by the service's attestation key that the
pinned trust root certifies, under its own statement type so it can never pass for another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

STATEMENT_TYPE = "audit-export"
DOCUMENT_FORMAT = "cleanroom-audit-export/v1"


def entries_digest(lines: Sequence[str]) -> str:
    """SHA-256 of the entries as a JSON-lines file: each line, then a newline."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class ExportSummary:
    """The facts a statement signs about one export."""

    exporter: str            # "principals/{id}"
    organisation: str        # the exporter's organisation id ("" for none)
    exported_at: str         # RFC 3339 UTC
    entries: int
    entries_sha256: str
    first_seq: int           # 0 when the export is empty
    last_seq: int
    last_hash: str
    chain_verified: bool     # the service's own chain check at export time
    first_bad_seq: int = 0

    def payload(self) -> dict[str, Any]:
        return {"type": STATEMENT_TYPE, "simulated": True, "exporter": self.exporter, "organisation": self.organisation,
                "exported_at": self.exported_at, "entries": self.entries, "entries_sha256": self.entries_sha256,
                "first_seq": self.first_seq, "last_seq": self.last_seq, "last_hash": self.last_hash,
                "chain_verified": self.chain_verified, "first_bad_seq": self.first_bad_seq}
