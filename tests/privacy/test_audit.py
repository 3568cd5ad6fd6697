"""The audit chain: every action leaves an entry, and any edit, deletion, reordering or truncation
is detected, with the first bad entry named."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import delete, select, update

from cleanroom.domain.audit import Anchor, AuditEntry, seal, verify_chain
from cleanroom.domain.identity import Principal, Role
from cleanroom.domain.privacy import Privacy
from cleanroom.privacy.audit import AuditService
from cleanroom.storage import audit_repo
from cleanroom.storage.clock import now
from cleanroom.storage.db import Database, migrate
from cleanroom.storage.tables import AuditEntryRow, AuditHeadRow
from tests.ledger_fixtures import build_world


@pytest.fixture
def audited(database_url: str):
    db = Database(database_url)
    migrate(db.engine)
    world = build_world(db)
    world.budgets.share(world.officer, world.dataset_id, world.makers[0].id, Privacy.cap(5, 1e-5), "pilot study")
    world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(5, 1e-5), "hospital total")
    spend = world.ledger.reserve(world.spend(Privacy.cost(1, 1e-7)), actor_id=world.officer.id)
    world.ledger.release(spend.id, Privacy.cost(1, 1e-7))
    yield db, AuditService(db)
    db.dispose()


def _entries(db: Database) -> list[AuditEntry]:
    with db.transaction() as session:
        return list(audit_repo.entries(session))


def test_actions_are_recorded_and_chain_verifies(audited) -> None:
    db, audit = audited
    actions = [e.action for e in _entries(db)]
    assert actions == ["dataset.share", "ledger.cap", "ledger.cap", "ledger.reserve", "ledger.commit"]
    verdict = audit.verify()
    assert verdict.ok and verdict.entries == 5 and verdict.head.seq == 5


def test_edit_is_detected_at_the_edited_entry(audited) -> None:
    db, audit = audited
    with db.transaction() as session:
        session.execute(update(AuditEntryRow).where(AuditEntryRow.seq == 3).values(details_json=json.dumps({"epsilon": 0.0})))
    verdict = audit.verify()
    assert not verdict.ok and verdict.first_bad_seq == 3 and "edited" in verdict.problem


def test_deletion_is_detected(audited) -> None:
    db, audit = audited
    with db.transaction() as session:
        session.execute(delete(AuditEntryRow).where(AuditEntryRow.seq == 2))
    verdict = audit.verify()
    assert not verdict.ok and verdict.first_bad_seq == 3


def test_reordering_is_detected(audited) -> None:
    db, audit = audited
    with db.transaction() as session:
        rows = {r.seq: r for r in session.scalars(select(AuditEntryRow).where(AuditEntryRow.seq.in_([2, 3])))}
        two, three = rows[2], rows[3]
        # Swap the contents of entries 2 and 3, keeping each row's position.
        swapped = [(c.key, getattr(three, c.key), getattr(two, c.key)) for c in AuditEntryRow.__table__.columns if c.key != "seq"]
        for key, value_for_two, value_for_three in swapped:
            setattr(two, key, value_for_two)
            setattr(three, key, value_for_three)
    verdict = audit.verify()
    assert not verdict.ok and verdict.first_bad_seq == 2


def test_truncation_is_detected_against_the_head_and_an_anchor(audited) -> None:
    db, audit = audited
    anchor = audit.verify().head
    with db.transaction() as session:
        session.execute(delete(AuditEntryRow).where(AuditEntryRow.seq >= 4))
    verdict = audit.verify()
    assert not verdict.ok and verdict.first_bad_seq == 4
    # An attacker who also rewrites the head is still caught by the anchor kept outside.
    with db.transaction() as session:
        last = session.get(AuditEntryRow, 3)
        session.execute(update(AuditHeadRow).values(seq=3, hash=last.hash))
    assert audit.verify().ok
    caught = audit.verify(anchor)
    assert not caught.ok and caught.first_bad_seq == 4 and "anchor" in caught.problem


def test_a_forged_append_without_the_chain_is_detected() -> None:
    genuine = [seal(AuditEntry(1, "t1", "a", "x", "y")), ]
    genuine.append(seal(AuditEntry(2, "t2", "a", "x", "y", {}, genuine[0].hash)))
    forged = seal(AuditEntry(3, "t3", "a", "x", "y", {}, "f" * 64))
    verdict = verify_chain([*genuine, forged], stored_head=Anchor(3, forged.hash))
    assert not verdict.ok and verdict.first_bad_seq == 3


def test_export_is_json_lines_that_verify_offline(audited) -> None:
    db, audit = audited
    auditor = Principal("aud", "Auditor", Role.AUDITOR, now())
    lines = [entry.to_json() for entry in audit.export(auditor)]
    parsed = [AuditEntry(**json.loads(line)) for line in lines]
    assert verify_chain(parsed).ok and len(parsed) == 5
    owner = Principal("owner", "Hospital", Role.DATA_OWNER, now())
    assert {e.target for e in audit.export(owner)} == {"datasets/dset"}
    stranger = Principal("other", "Other hospital", Role.DATA_OWNER, now())
    assert list(audit.export(stranger)) == []


def test_verification_while_another_writer_appends_never_reports_a_break(audited) -> None:
    """The head and the entries are read in one snapshot: on PostgreSQL's READ COMMITTED, entries
    committed between reading the head and walking the log made an intact chain look broken."""
    import threading

    db, service = audited
    stop = threading.Event()

    def append() -> None:
        while not stop.is_set():
            with db.transaction() as session:
                audit_repo.append(session, actor="system", action="test.append", target="tests/race")

    writer = threading.Thread(target=append)
    writer.start()
    try:
        verdicts = [service.verify() for _ in range(30)]
    finally:
        stop.set()
        writer.join()
    assert all(v.ok for v in verdicts), next(v.problem for v in verdicts if not v.ok)
