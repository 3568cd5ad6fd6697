"""The release queries on SQLite and PostgreSQL: released jobs and stored answers page together in
id order within a viewer's scope, and a spend's ledger events come back on the datasets asked."""

from __future__ import annotations

import pytest

from cleanroom.domain.privacy import EventKind, LedgerEvent, Privacy
from cleanroom.storage import clock, privacy_repo, release_repo
from cleanroom.storage.db import Database, migrate
from cleanroom.storage.release_repo import Scope, StoredAnswer
from cleanroom.storage.tables import PrincipalRow
from tests.storage.rows import add_released_training_job

JOB = "j" + "1" * 16


@pytest.fixture
def db(database_url: str):
    database = Database(database_url)
    migrate(database.engine)
    with database.transaction() as session:
        for principal in ("p1", "p2"):
            session.add(PrincipalRow(id=principal, display_name=principal, role="manufacturer", token_hash=principal * 32,
                                     created_at=clock.now(), organisation_id=""))
    with database.transaction() as session:
        add_released_training_job(session, owner_id="p1", model_id="m1", job_id=JOB, artifacts=[])
        for index, (maker, dataset) in enumerate((("p1", "d1"), ("p2", "d2"), ("p1", "d1"))):
            release_repo.add_answer(session, StoredAnswer(f"s{index:016x}", maker, (dataset, "d9"), "mean", f"datasets/{dataset}/q",
                                                          f"spend{index}", Privacy(500_000, 0), b'{"a":1}', b"receipt", (index + 1,),
                                                          clock.now()))
    yield database
    database.dispose()


def _ids(db: Database, scope: Scope, after: str | None = None, limit: int = 10) -> list[str]:
    with db.read() as session:
        return [item.id for item in release_repo.page(session, scope, after_id=after, limit=limit)]


def test_released_jobs_and_answers_page_together_within_a_scope(db: Database) -> None:
    answers = [f"s{i:016x}" for i in range(3)]
    assert _ids(db, Scope()) == [JOB, *answers]
    assert _ids(db, Scope(), limit=2) == [JOB, answers[0]] and _ids(db, Scope(), after=answers[0], limit=2) == answers[1:]
    assert _ids(db, Scope(manufacturer_id="p1")) == [JOB, answers[0], answers[2]]
    assert _ids(db, Scope(dataset_ids=frozenset({"d2"}))) == [answers[1]]
    assert _ids(db, Scope(dataset_id="d", kinds=frozenset({"training"}))) == [JOB]
    assert _ids(db, Scope(kinds=frozenset({"statistics"}), manufacturer_id="p2")) == [answers[1]]
    assert _ids(db, Scope(manufacturer_id="")) == []
    with db.read() as session:
        stored = release_repo.get_answer(session, answers[1])
        assert stored is not None and stored.dataset_ids == ("d2", "d9") and stored.audit_seqs == (2,)
        assert stored.spent == Privacy(500_000, 0) and stored.receipt == b"receipt"
        assert release_repo.get_answer(session, "s" + "f" * 16) is None
        assert release_repo.released_job(session, JOB) is not None


def test_a_spends_ledger_events_on_the_datasets_asked(db: Database) -> None:
    with db.transaction() as session:
        for dataset in ("d1", "d2"):
            privacy_repo.add_event(session, LedgerEvent(EventKind.RESERVE, (f"b-{dataset}",), Privacy(1, 0), "p1", clock.now(),
                                                        spend_id="spend0"), dataset_id=dataset, manufacturer_id="p1")
    with db.read() as session:
        assert [e.budget_ids for e in release_repo.spend_events(session, "spend0", None)] == [("b-d1",), ("b-d2",)]
        assert [e.budget_ids for e in release_repo.spend_events(session, "spend0", {"d2"})] == [("b-d2",)]
        assert release_repo.spend_events(session, "other", None) == []
