"""A signed audit export: putting one together, and the check a regulator runs on it.

The document (JSON) holds the entries exactly as the service exported them (canonical JSON lines),
the service's signed statement over them and the certificate of the key that signed it. A
regulator checks it against the trust root they pinned (`cleanroom trust pin`), never a root the
document or the server offers: `verify_audit_export(document, pinned_root_pem=...)` returns every
check named and explained, and the export holds when every one passed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import takewhile
from typing import Any

import enclave_sim
from cleanroom.domain.audit import GENESIS_HASH, AuditEntry, entry_hash
from cleanroom.domain.audit_export import DOCUMENT_FORMAT, STATEMENT_TYPE, entries_digest
from cleanroom.sdk.release_check import Check
from enclave_sim.signing import open_envelope, parse_envelope_bytes, signature_valid

CHECKS = ("certificate", "signature", "digest", "last entry", "entry hashes", "chain", "service chain check")


def statement_payload(statement: bytes) -> dict[str, Any]:
    """The statement's payload as signed (not yet checked)."""
    payload, _signature = parse_envelope_bytes(statement, STATEMENT_TYPE)
    return payload


def assemble(statement: bytes, certificate: bytes, lines: Iterable[str]) -> bytes:
    """The export document: the entries up to the statement's last seq, with the statement and certificate."""
    last_seq = int(statement_payload(statement)["last_seq"])
    covered = list(takewhile(lambda line: int(json.loads(line)["seq"]) <= last_seq, lines))  # in seq order
    document = {"format": DOCUMENT_FORMAT, "statement": json.loads(statement), "certificate": json.loads(certificate),
                "entries": covered}
    return json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"


def verify_audit_export(document: bytes, *, pinned_root_pem: bytes) -> list[Check]:
    """Every check of an export document, in the order of CHECKS."""
    try:
        parsed = json.loads(document)
        if not isinstance(parsed, dict) or parsed.get("format") != DOCUMENT_FORMAT:
            raise ValueError("not a cleanroom audit export")
        payload, signature = open_envelope(parsed["statement"], STATEMENT_TYPE)
        certificate = enclave_sim.AttestationCertificate.from_json(parsed["certificate"])
        lines = [str(line) for line in parsed["entries"]]
        entries = [_entry(line) for line in lines]
    except (ValueError, KeyError, TypeError, enclave_sim.EnclaveSimError) as error:
        reason = f"the document is not a well-formed signed audit export ({type(error).__name__})"
        return [Check(name, False, reason) for name in CHECKS]
    return [_certificate(certificate, payload, pinned_root_pem), _signature(certificate, payload, signature),
            _digest(lines, payload), _last_entry(entries, payload), _entry_hashes(entries), _chain(entries),
            _service_check(payload)]


def _entry(line: str) -> AuditEntry:
    fields = json.loads(line)
    return AuditEntry(int(fields["seq"]), str(fields["at"]), str(fields["actor"]), str(fields["action"]), str(fields["target"]),
                      dict(fields["details"]), str(fields["prev_hash"]), str(fields["hash"]))


def _certificate(certificate: enclave_sim.AttestationCertificate, payload: dict[str, Any], pinned_root_pem: bytes) -> Check:
    try:
        certificate.check_issuer(enclave_sim.load_public_key_pem(pinned_root_pem))
        certificate.check_validity(enclave_sim.parse_time(str(payload.get("exported_at", ""))))
    except enclave_sim.EnclaveSimError as error:
        return Check("certificate", False, f"the signing key is not vouched for by the pinned root: {error}")
    except ValueError:
        return Check("certificate", False, "the pinned root is not an Ed25519 public key, or the export time is unreadable")
    return Check("certificate", True, "the signing key is certified by the pinned root and was valid when the export was signed")


def _signature(certificate: enclave_sim.AttestationCertificate, payload: dict[str, Any], signature: str) -> Check:
    if signature_valid(certificate.attestation_public_key(), payload, signature):
        return Check("signature", True, "the statement is signed by the certified key, unaltered")
    return Check("signature", False, "the statement's signature does not match its contents: it was altered after signing")


def _digest(lines: list[str], payload: dict[str, Any]) -> Check:
    if len(lines) != payload.get("entries"):
        return Check("digest", False, f"the statement covers {payload.get('entries')} entries; the document holds {len(lines)}")
    if entries_digest(lines) != payload.get("entries_sha256"):
        return Check("digest", False, "the entries' SHA-256 differs from the signed one: entries were altered, added or removed")
    return Check("digest", True, f"the {len(lines)} entries are exactly the ones signed (SHA-256 matches)")


def _last_entry(entries: list[AuditEntry], payload: dict[str, Any]) -> Check:
    last = (entries[-1].seq, entries[-1].hash) if entries else (0, GENESIS_HASH)
    if last != (payload.get("last_seq"), payload.get("last_hash")):
        return Check("last entry", False, "the last entry is not the one the statement names")
    return Check("last entry", True, f"ends at entry {last[0]} with the signed hash")


def _entry_hashes(entries: list[AuditEntry]) -> Check:
    altered = next((e.seq for e in entries if entry_hash(e) != e.hash), None)
    if altered is not None:
        return Check("entry hashes", False, f"entry {altered}'s content does not match its hash (edited)")
    return Check("entry hashes", True, "every entry's hash recomputes from its content")


def _chain(entries: list[AuditEntry]) -> Check:
    """Consecutive entries must link; a gap (entries outside the exporter's view) is allowed but must go forward."""
    previous: AuditEntry | None = None
    for entry in entries:
        if previous is None and entry.seq == 1 and entry.prev_hash != GENESIS_HASH:
            return Check("chain", False, "entry 1 does not start the chain")
        if previous is not None and (entry.seq <= previous.seq or (entry.seq == previous.seq + 1 and entry.prev_hash != previous.hash)):
            return Check("chain", False, f"entry {entry.seq} does not follow entry {previous.seq} (deleted, inserted or reordered)")
        previous = entry
    return Check("chain", True, "each entry follows the one before it")


def _service_check(payload: dict[str, Any]) -> Check:
    if payload.get("chain_verified") is True:
        return Check("service chain check", True, "the service verified the whole hash chain when it signed")
    return Check("service chain check", False,
                 f"the service found the hash chain broken at entry {payload.get('first_bad_seq')} when it signed")


def main(argv: list[str] | None = None) -> int:
    """`python -m cleanroom.sdk.audit_export EXPORT.json ROOT.pem`: a regulator's check; exit 0 when it holds."""
    import sys
    from pathlib import Path

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m cleanroom.sdk.audit_export EXPORT.json PINNED-ROOT.pem", file=sys.stderr)
        return 2
    try:
        document, root = Path(args[0]).read_bytes(), Path(args[1]).read_bytes()
    except OSError as error:
        print(f"cannot read {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    checks = verify_audit_export(document, pinned_root_pem=root)
    for check in checks:
        print(f"{'ok  ' if check.passed else 'FAIL'} {check.name}: {check.explanation}")
    holds = all(check.passed for check in checks)
    print("the export verifies against the pinned root" if holds else "the export does NOT verify")
    return 0 if holds else 1


if __name__ == "__main__":
    raise SystemExit(main())
