"""Signing an audit export (attestation/audit_export.py) on SQLite and PostgreSQL: the statement
covers exactly the entries up to through_seq, verifies against the root that certified the key,
records the chain's verdict, and is itself audited."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import update

import enclave_sim
from cleanroom.attestation.audit_export import AuditExportSigner
from cleanroom.domain.privacy import Privacy
from cleanroom.privacy.audit import AuditService
from cleanroom.sdk.audit_export import assemble, statement_payload, verify_audit_export
from cleanroom.storage import audit_repo
from cleanroom.storage.db import Database, migrate
from cleanroom.storage.tables import AuditEntryRow
from tests.ledger_fixtures import build_world


@pytest.fixture
def signing(database_url: str):
    db = Database(database_url)
    migrate(db.engine)
    world = build_world(db)
    world.budgets.share(world.officer, world.dataset_id, world.makers[0].id, Privacy.cap(5, 1e-5), "pilot study")
    world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(5, 1e-5), "hospital total")
    root = enclave_sim.RootAuthority(Ed25519PrivateKey.generate())
    audit = AuditService(db)
    yield db, audit, AuditExportSigner(db, audit, enclave_sim.AttestationKey.generate(root)), world, root.public_key_pem()
    db.dispose()


def _document(audit: AuditService, world, signed) -> bytes:
    return assemble(signed.statement, signed.certificate, (e.to_json() for e in audit.export(world.officer)))


def test_a_signed_export_covers_its_entries_and_verifies(signing) -> None:
    db, audit, signer, world, root = signing
    signed = signer.sign(world.officer)
    payload = statement_payload(signed.statement)
    assert payload["entries"] == payload["last_seq"] == 3 and payload["chain_verified"] is True
    assert payload["exporter"] == f"principals/{world.officer.id}"
    document = _document(audit, world, signed)
    assert all(c.passed for c in verify_audit_export(document, pinned_root_pem=root))
    with db.read() as session:
        last = list(audit_repo.entries(session))[-1]
    assert last.seq == 4 and last.action == "audit.export_signed" and last.details["last_seq"] == 3  # audited, after what it signed

    partial = signer.sign(world.officer, through_seq=2)
    assert statement_payload(partial.statement)["last_seq"] == 2
    assert all(c.passed for c in verify_audit_export(_document(audit, world, partial), pinned_root_pem=root))


def test_a_broken_chain_is_stated_in_the_signed_export(signing) -> None:
    db, audit, signer, world, root = signing
    with db.transaction() as session:
        session.execute(update(AuditEntryRow).where(AuditEntryRow.seq == 2).values(details_json=json.dumps({"reason": "x"})))
    signed = signer.sign(world.officer)
    payload = statement_payload(signed.statement)
    assert payload["chain_verified"] is False and payload["first_bad_seq"] == 2
    checks = {c.name: c for c in verify_audit_export(_document(audit, world, signed), pinned_root_pem=root)}
    assert checks["signature"].passed and checks["digest"].passed  # signed as it is...
    assert not checks["entry hashes"].passed and not checks["service chain check"].passed  # ...and it says it is broken
    assert "entry 2" in checks["entry hashes"].explanation
