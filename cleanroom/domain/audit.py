"""The audit log as a hash chain (pure): each entry commits to the previous entry's hash.

Editing, deleting or reordering any entry breaks the chain at that entry. Cutting entries off the
end is caught against the stored head, and against a head an auditor exported earlier (an anchor
kept outside the database), which also catches a rewritten head.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str             # RFC 3339 UTC, as hashed
    actor: str          # "principals/{id}" or "system"
    action: str         # e.g. "dataset.upload", "budget.set", "ledger.reserve"
    target: str         # the resource acted on, e.g. "datasets/{id}"
    details: dict[str, Any] = field(default_factory=dict)  # never a data value
    prev_hash: str = GENESIS_HASH
    hash: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {"seq": self.seq, "at": self.at, "actor": self.actor, "action": self.action, "target": self.target,
             "details": self.details, "prev_hash": self.prev_hash, "hash": self.hash},
            sort_keys=True, separators=(",", ":"), ensure_ascii=False,
        )


def entry_hash(entry: AuditEntry) -> str:
    body = json.dumps(
        [entry.seq, entry.at, entry.actor, entry.action, entry.target, entry.details, entry.prev_hash],
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def seal(entry: AuditEntry) -> AuditEntry:
    return AuditEntry(entry.seq, entry.at, entry.actor, entry.action, entry.target, entry.details, entry.prev_hash, entry_hash(entry))


@dataclass(frozen=True)
class Anchor:
    """A point of the chain remembered outside it: (seq, hash)."""

    seq: int
    hash: str


@dataclass(frozen=True)
class ChainVerdict:
    ok: bool
    entries: int
    head: Anchor
    first_bad_seq: int = 0
    problem: str = ""


def verify_chain(entries: Iterable[AuditEntry], *, stored_head: Anchor | None = None, anchor: Anchor | None = None) -> ChainVerdict:
    """Walks the chain in storage order; names the first entry that does not hold."""
    previous, expected_seq, count, seen = GENESIS_HASH, 1, 0, {}
    for entry in entries:
        problem = _entry_problem(entry, expected_seq, previous)
        if problem:
            return ChainVerdict(False, count, Anchor(expected_seq - 1, previous), entry.seq if entry.seq > 0 else expected_seq, problem)
        seen[entry.seq] = entry.hash
        previous, expected_seq, count = entry.hash, expected_seq + 1, count + 1
    head = Anchor(expected_seq - 1, previous)
    for reference, label in ((stored_head, "stored head"), (anchor, "anchor")):
        if reference is not None and seen.get(reference.seq, GENESIS_HASH if reference.seq == 0 else None) != reference.hash:
            return ChainVerdict(False, count, head, min(reference.seq, expected_seq), f"entries missing or rewritten before the {label} (seq {reference.seq})")
    if stored_head is not None and stored_head.seq != head.seq:
        return ChainVerdict(False, count, head, min(stored_head.seq, head.seq) + 1, "the log does not end at the stored head")
    return ChainVerdict(True, count, head)


def _entry_problem(entry: AuditEntry, expected_seq: int, previous_hash: str) -> str:
    if entry.seq != expected_seq:
        return f"expected entry {expected_seq} here, found {entry.seq} (deleted or reordered)"
    if entry.prev_hash != previous_hash:
        return "does not follow the previous entry (deleted, inserted or reordered)"
    if entry_hash(entry) != entry.hash:
        return "content does not match its hash (edited)"
    return ""
