"""Two-officer approval against a real database (SQLite and PostgreSQL): a policy asking for two
approvals keeps a request pending after the first, refuses the same officer twice, reserves only on
a different officer's approval, is rejected by any officer, works per site for cohorts, and two
officers approving at once (from separate services, like separate servers) reserve exactly once."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from sqlalchemy import func, select

from cleanroom.domain.approvals import SECOND_OFFICER_NEEDED, ApprovalPolicy, RequestState
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.identity import Principal, hash_token
from cleanroom.domain.privacy import ZERO, dataset_budget_id, share_budget_id
from cleanroom.privacy.approvals import ApprovalService
from cleanroom.privacy.ledger import Ledger
from cleanroom.storage import audit_repo, principal_repo, privacy_repo
from cleanroom.storage.db import Database, migrate
from cleanroom.storage.tables import SpendRow
from tests.privacy.cohort_world import Cohort, build_cohort

NORTH = 0


@pytest.fixture
def cohort(database_url: str):
    db = Database(database_url)
    migrate(db.engine)
    world = build_cohort(db)
    world.set_caps(dataset=(10, 10, 10), share=(5, 5, 5))
    for site in range(3):
        world.budgets.set_policy(world.operator, world.dataset_ids[site], ApprovalPolicy(approvals_required=2), "four eyes")
    yield world
    db.dispose()


def _second_north_officer(world: Cohort, name: str = "officer-north-2") -> Principal:
    officer = replace(world.officers[NORTH], id=name, display_name=name)
    with world.db.transaction() as session:
        principal_repo.add_principal(session, officer, hash_token(officer.id))
    return officer


def _reserved(world: Cohort, site: int = NORTH):
    balances, _ = world.state()
    return balances[dataset_budget_id(world.dataset_ids[site])].reserved


def _spends(world: Cohort) -> int:
    with world.db.read() as session:
        return session.scalar(select(func.count()).select_from(SpendRow)) or 0


def test_the_second_approval_must_come_from_another_officer(cohort: Cohort) -> None:
    north, operator = cohort.officers[NORTH], cohort.operator
    request = cohort.approvals.submit(cohort.maker, cohort.request(1.0, sites=(NORTH,)))
    assert request.state is RequestState.PENDING and request.approvals_required == 2

    first = cohort.approvals.approve(north, request.id, "looks fine")
    assert first.state is RequestState.PENDING and [a.officer_id for a in first.approvals] == [north.id]
    assert _reserved(cohort) == ZERO and _spends(cohort) == 0

    with pytest.raises(CleanroomError) as again:
        cohort.approvals.approve(north, request.id, "I insist")
    assert again.value.code is ErrorCode.FAILED_PRECONDITION and again.value.message == SECOND_OFFICER_NEEDED
    assert [v.field for v in again.value.violations] == ["approvals"]
    assert _reserved(cohort) == ZERO

    done = cohort.approvals.approve(operator, request.id, "agreed")
    assert done.state is RequestState.APPROVED and done.spend_id and done.decided_by == operator.id
    assert [a.officer_id for a in done.approvals] == [north.id, operator.id]
    assert _reserved(cohort) == request.cost and _spends(cohort) == 1
    with cohort.db.read() as session:
        actions = [e.action for e in audit_repo.entries(session)]
    assert actions.count("request.approval") == 1 and actions.count("request.approved") == 1
    cohort.check_ledger()


def test_any_officer_rejects_even_after_a_first_approval(cohort: Cohort) -> None:
    request = cohort.approvals.submit(cohort.maker, cohort.request(1.0, sites=(NORTH,)))
    cohort.approvals.approve(cohort.officers[NORTH], request.id, "fine by me")
    rejected = cohort.approvals.reject(cohort.operator, request.id, "not this one")
    assert rejected.state is RequestState.REJECTED and _spends(cohort) == 0
    with pytest.raises(CleanroomError) as late:
        cohort.approvals.approve(cohort.operator, request.id, "changed my mind")
    assert late.value.code is ErrorCode.ALREADY_DECIDED


def test_a_request_keeps_the_policy_it_was_submitted_under(cohort: Cohort) -> None:
    dataset_id = cohort.dataset_ids[NORTH]
    before = cohort.approvals.submit(cohort.maker, cohort.request(1.0, sites=(NORTH,), reference="jobs/before"))
    cohort.budgets.set_policy(cohort.operator, dataset_id, ApprovalPolicy(), "back to one officer")
    after = cohort.approvals.submit(cohort.maker, cohort.request(1.0, sites=(NORTH,), reference="jobs/after"))
    assert cohort.approvals.approve(cohort.officers[NORTH], after.id, "ok").state is RequestState.APPROVED
    assert cohort.approvals.approve(cohort.officers[NORTH], before.id, "ok").state is RequestState.PENDING


def test_a_cohort_site_with_two_officers_waits_for_both(cohort: Cohort) -> None:
    cohort.budgets.set_policy(cohort.operator, cohort.dataset_ids[1], ApprovalPolicy(), "one officer at south")
    group = cohort.approvals.submit_cohort(cohort.maker, cohort.request(1.0, sites=(0, 1)))
    north_row, south_row = group.rows
    assert (north_row.approvals_required, south_row.approvals_required) == (2, 1)
    cohort.approvals.approve(cohort.officers[1], south_row.id, "south agrees")
    cohort.approvals.approve(cohort.officers[NORTH], north_row.id, "north's first officer agrees")
    assert cohort.approvals.group_outcome(north_row.id) == (RequestState.PENDING, None)
    assert _spends(cohort) == 0
    second = _second_north_officer(cohort)
    cohort.approvals.approve(second, north_row.id, "north's second officer agrees")
    state, spend_id = cohort.approvals.group_outcome(north_row.id)
    assert state is RequestState.APPROVED and spend_id is not None
    assert _reserved(cohort, 0) == _reserved(cohort, 1) == north_row.cost
    cohort.check_ledger()


def _race(services: list[ApprovalService], officers: list[Principal], request_id: str) -> list[str]:
    """Every officer approves at once, each through its own service; each outcome, in order."""
    barrier, outcomes = threading.Barrier(len(officers)), [""] * len(officers)

    def approve(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = services[i].approve(officers[i], request_id, "racing").state.value
        except CleanroomError as error:
            outcomes[i] = error.code.name
        except Exception as error:  # noqa: BLE001  # a deadlock or lock timeout fails the caller's check
            outcomes[i] = f"crash: {type(error).__name__}"

    threads = [threading.Thread(target=approve, args=(i,)) for i in range(len(officers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_two_officers_approving_at_once_reserve_exactly_once(cohort: Cohort, database_url: str) -> None:
    officers = [cohort.officers[NORTH], _second_north_officer(cohort), cohort.operator]
    databases = [Database(database_url) for _ in officers]
    services = [ApprovalService(db, Ledger(db, owner=f"server{i}")) for i, db in enumerate(databases)]
    try:
        for round_ in range(3):
            request = cohort.approvals.submit(cohort.maker, cohort.request(0.5, sites=(NORTH,), reference=f"jobs/r{round_}"))
            outcomes = _race(services, officers, request.id)
            assert sorted(outcomes) == ["ALREADY_DECIDED", "approved", "pending"], outcomes
            with cohort.db.read() as session:
                stored = privacy_repo.get_request(session, request.id)
            assert stored is not None and stored.state is RequestState.APPROVED and len(stored.approvals) == 2
        assert _spends(cohort) == 3
        balances = cohort.check_ledger()
        assert balances[share_budget_id(cohort.dataset_ids[NORTH], cohort.maker.id)].reserved.epsilon_value == pytest.approx(1.5)
    finally:
        for db in databases:
            db.dispose()


def test_the_platform_officer_and_a_hospital_officer_are_different_officers(cohort: Cohort) -> None:
    """Approvals count officers, not organisations: the operator's officer (who governs every
    dataset) is a valid second to a hospital's only officer, in either order."""
    request = cohort.approvals.submit(cohort.maker, cohort.request(1.0, sites=(NORTH,)))
    cohort.approvals.approve(cohort.operator, request.id, "operator first")
    assert cohort.approvals.approve(cohort.officers[NORTH], request.id, "hospital second").state is RequestState.APPROVED


def test_an_officer_of_another_hospital_cannot_be_the_second(cohort: Cohort) -> None:
    request = cohort.approvals.submit(cohort.maker, cohort.request(1.0, sites=(NORTH,)))
    cohort.approvals.approve(cohort.officers[NORTH], request.id, "north agrees")
    with pytest.raises(CleanroomError) as outsider:
        cohort.approvals.approve(cohort.officers[1], request.id, "south would like to help")
    assert outsider.value.code is ErrorCode.NOT_FOUND
