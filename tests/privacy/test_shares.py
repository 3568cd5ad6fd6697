"""Pausing and withdrawing a share against a real database (SQLite and PostgreSQL): a paused share
takes no new reservation (refused FAILED_PRECONDITION before any budget moves), work reserved before
runs on and commits, and it resumes; a withdrawn share is final, hides the dataset from the
manufacturer and rejects its pending requests. Only the dataset's data owners and officers act."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cleanroom.domain.approvals import ApprovalPolicy, RequestState
from cleanroom.domain.budgets import ShareState
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.identity import Principal, Role, hash_token
from cleanroom.domain.privacy import ZERO, Privacy, share_budget_id
from cleanroom.storage import audit_repo, principal_repo, privacy_repo
from cleanroom.storage.db import Database, migrate
from tests.privacy.cohort_world import Cohort, build_cohort

NORTH = 0


@pytest.fixture
def world(database_url: str):
    db = Database(database_url)
    migrate(db.engine)
    cohort = build_cohort(db)
    cohort.set_caps(dataset=(10, 10, 10), share=(5, 5, 5))
    for site in range(3):
        cohort.set_auto_approve(site, 2)
    yield cohort
    db.dispose()


def _owner(world: Cohort, site: int) -> Principal:
    with world.db.read() as session:
        owner = principal_repo.get_principal(session, f"owner-{('north', 'south', 'east')[site]}")
    assert owner is not None
    return owner


def _refused(call) -> CleanroomError:
    with pytest.raises(CleanroomError) as err:
        call()
    return err.value


def _share(world: Cohort, site: int = NORTH):
    balances, _ = world.state()
    return balances[share_budget_id(world.dataset_ids[site], world.maker.id)]


def test_a_paused_share_takes_no_new_reservation_and_running_work_finishes(world: Cohort) -> None:
    dataset_id, owner = world.dataset_ids[NORTH], _owner(world, NORTH)
    running = world.ledger.reserve(world.request(1.0, sites=(NORTH,)), actor_id=world.maker.id)
    waiting = world.approvals.submit(world.maker, world.request(3.0, sites=(NORTH,), reference="jobs/big"))
    assert waiting.state is RequestState.PENDING

    world.budgets.set_share_state(owner, dataset_id, world.maker.id, ShareState.PAUSED, "ethics review")
    before = world.state()
    for attempt in (lambda: world.ledger.reserve(world.request(1.0, sites=(NORTH,)), actor_id=world.maker.id),
                    lambda: world.approvals.submit(world.maker, world.request(1.0, sites=(NORTH,))),
                    lambda: world.approvals.submit_cohort(world.maker, world.request(1.0, sites=(1, NORTH))),
                    lambda: world.approvals.approve(world.officers[NORTH], waiting.id, "fine")):
        error = _refused(attempt)
        assert error.code is ErrorCode.FAILED_PRECONDITION and "paused" in error.message
        assert [v.field for v in error.violations] == [f"datasets/{dataset_id}"]
    assert world.state() == before  # refused before anything moved: no event, no balance change
    with world.db.read() as session:
        assert privacy_repo.get_request(session, waiting.id).state is RequestState.PENDING  # type: ignore[union-attr]
        assert privacy_repo.is_shared(session, dataset_id, world.maker.id)  # still seen while paused
        with pytest.raises(CleanroomError):
            privacy_repo.shared_policy(session, dataset_id, world.maker.id)

    world.ledger.release(running.id, Privacy.cost(0.5, 1e-7))  # reserved before the pause: it commits
    assert _share(world).spent == Privacy.cost(0.5, 1e-7) and _share(world).reserved == ZERO

    world.budgets.set_share_state(world.officers[NORTH], dataset_id, world.maker.id, ShareState.ACTIVE, "review done")
    assert world.approvals.approve(world.officers[NORTH], waiting.id, "fine").state is RequestState.APPROVED
    world.check_ledger()
    with world.db.read() as session:
        actions = [(e.action, e.actor) for e in audit_repo.entries(session) if e.action.startswith("share.")]
    assert actions == [("share.paused", owner.resource_name), ("share.active", world.officers[NORTH].resource_name)]


def test_a_withdrawn_share_is_final_and_hides_the_dataset(world: Cohort) -> None:
    dataset_id = world.dataset_ids[NORTH]
    world.budgets.set_policy(world.operator, dataset_id, ApprovalPolicy(), "every request waits")
    running = world.ledger.reserve(world.request(1.0, sites=(NORTH,)), actor_id=world.maker.id)
    waiting = world.approvals.submit(world.maker, world.request(1.0, sites=(NORTH,), reference="jobs/w"))
    group = world.approvals.submit_cohort(world.maker, world.request(1.0, sites=(1, NORTH), reference="jobs/g"))

    world.budgets.set_share_state(_owner(world, NORTH), dataset_id, world.maker.id, ShareState.WITHDRAWN, "consent withdrawn")
    with world.db.read() as session:
        assert not privacy_repo.is_shared(session, dataset_id, world.maker.id)
        assert dataset_id not in privacy_repo.shared_dataset_ids(session, world.maker.id)
        assert privacy_repo.shared_policy(session, dataset_id, world.maker.id) is None
        stored = privacy_repo.get_request(session, waiting.id)
    assert stored is not None and stored.state is RequestState.REJECTED and stored.reason == "the share was withdrawn"
    assert world.approvals.group_outcome(group.id) == (RequestState.REJECTED, None)  # a cohort's whole group too

    for state in (ShareState.ACTIVE, ShareState.PAUSED):
        error = _refused(lambda s=state: world.budgets.set_share_state(world.operator, dataset_id, world.maker.id, s, "undo"))
        assert error.code is ErrorCode.FAILED_PRECONDITION and "final" in error.message
    error = _refused(lambda: world.budgets.share(world.operator, dataset_id, world.maker.id, Privacy.cap(5, 1e-5), "again"))
    assert error.code is ErrorCode.FAILED_PRECONDITION
    error = _refused(lambda: world.ledger.reserve(world.request(0.1, sites=(NORTH,)), actor_id=world.maker.id))
    assert error.code is ErrorCode.FAILED_PRECONDITION and "withdrawn" in error.message

    world.ledger.release(running.id, Privacy.cost(1.0, 1e-7))  # running work finishes
    assert _share(world).spent == Privacy.cost(1.0, 1e-7)
    world.check_ledger()


def test_only_the_datasets_own_hospital_may_change_a_share(world: Cohort) -> None:
    dataset_id = world.dataset_ids[NORTH]
    for outsider in (_owner(world, 1), world.officers[1]):
        error = _refused(lambda p=outsider: world.budgets.set_share_state(p, dataset_id, world.maker.id, ShareState.PAUSED, "not mine"))
        assert error.code is ErrorCode.NOT_FOUND and error.message == "dataset not found"  # as if it did not exist
    operator_owner = replace(_owner(world, 1), id="operator-owner", organisation_id="operator", role=Role.DATA_OWNER)
    with world.db.transaction() as session:
        principal_repo.add_principal(session, operator_owner, hash_token(operator_owner.id))
    error = _refused(lambda: world.budgets.set_share_state(operator_owner, dataset_id, world.maker.id, ShareState.PAUSED, "x"))
    assert error.code is ErrorCode.NOT_FOUND  # a data owner is never platform-wide
    unshared = world.dataset_ids[2]
    world.budgets.set_share_state(world.operator, unshared, world.maker.id, ShareState.PAUSED, "platform-wide")
    error = _refused(lambda: world.budgets.set_share_state(world.operator, dataset_id, "nobody", ShareState.PAUSED, "x"))
    assert error.code is ErrorCode.NOT_FOUND
    with world.db.read() as session:
        assert privacy_repo.share_state(session, dataset_id, world.maker.id) is ShareState.ACTIVE


def test_a_hospitals_data_owner_sees_its_shares_and_ledger_only(world: Cohort) -> None:
    north, south = _owner(world, NORTH), _owner(world, 1)
    world.budgets.set_share_state(world.officers[NORTH], world.dataset_ids[NORTH], world.maker.id, ShareState.PAUSED, "audit")
    view = world.budgets.view(north, world.dataset_ids[NORTH])
    share = next(line for line in view.lines if line.manufacturer is not None)
    assert share.share_state is ShareState.PAUSED and share.share_state_reason == "audit"
    assert share.balance.cap == Privacy.cap(5, 1e-5)
    assert _refused(lambda: world.budgets.view(south, world.dataset_ids[NORTH])).code is ErrorCode.NOT_FOUND
    events = world.budgets.ledger_events(north, dataset_id=None, manufacturer_id=None, kind=None, after_seq=0, limit=1000)
    assert events and all(budget.startswith(f"datasets/{world.dataset_ids[NORTH]}") for e in events for budget in e.budget_ids)
    error = _refused(lambda: world.budgets.ledger_events(south, dataset_id=world.dataset_ids[NORTH], manufacturer_id=None,
                                                         kind=None, after_seq=0, limit=10))
    assert error.code is ErrorCode.NOT_FOUND
