"""The inbox's "if you approve all of these, this is what remains", checked against the real ledger
(SQLite and PostgreSQL): approving every pending request in queue order leaves exactly the predicted
budgets, and the requests predicted not to fit are exactly the ones the ledger refuses."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cleanroom.domain.approvals import ApprovalPolicy, RequestState
from cleanroom.domain.budgets import ShareState
from cleanroom.domain.identity import Principal, hash_token
from cleanroom.domain.pagination import PageRequest
from cleanroom.domain.privacy import Privacy
from cleanroom.privacy.ledger import BudgetExhausted, SpendRequest
from cleanroom.storage import principal_repo
from cleanroom.storage.db import Database, migrate
from tests.privacy.cohort_world import Cohort, build_cohort

NORTH = 0


@pytest.fixture
def world(database_url: str):
    db = Database(database_url)
    migrate(db.engine)
    cohort = build_cohort(db)
    cohort.set_caps(dataset=(8, 10, 10), share=(5, 5, 5))
    cohort.budgets.set_policy(cohort.operator, cohort.dataset_ids[NORTH], ApprovalPolicy(), "every request waits")
    yield cohort
    db.dispose()


def _second_maker(world: Cohort, cap: float) -> Principal:
    maker = replace(world.maker, id="maker-2", display_name="Second maker")
    with world.db.transaction() as session:
        principal_repo.add_principal(session, maker, hash_token(maker.id))
    world.budgets.share(world.operator, world.dataset_ids[NORTH], maker.id, Privacy.cap(cap, 1e-5), "second study")
    return maker


def _submit(world: Cohort, maker: Principal, eps: float, delta: float, n: int) -> None:
    request = SpendRequest(world.dataset_ids[NORTH], maker.id, "training", f"jobs/{maker.id}-{n}", Privacy.cost(eps, delta))
    assert world.approvals.submit(maker, request).state is RequestState.PENDING


def _approve_in_queue_order(world: Cohort) -> tuple[list[str], list[str]]:
    approved, refused = [], []
    for request in world.approvals.pending(world.operator, PageRequest(size=1000, after_id=None)):
        try:
            world.approvals.approve(world.officers[NORTH], request.id, "approving the whole inbox")
            approved.append(request.id)
        except BudgetExhausted:
            refused.append(request.id)
    return approved, refused


def test_approving_every_pending_request_leaves_exactly_the_predicted_budgets(world: Cohort) -> None:
    other = _second_maker(world, cap=3)
    world.ledger.reserve(SpendRequest(world.dataset_ids[NORTH], other.id, "statistics", "q/1", Privacy.cost(0.5, 0)), actor_id=other.id)
    # The maker's share (5) cannot take all of its three; the dataset-wide cap (8) binds the rest.
    for n, (maker, eps, delta) in enumerate([(world.maker, 2.0, 1e-7), (world.maker, 2.5, 2e-7), (world.maker, 1.0, 1e-7),
                                             (other, 2.0, 1e-6), (other, 0.4, 0), (world.maker, 0.3, 1e-7)]):
        _submit(world, maker, eps, delta, n)

    [composition] = world.approvals.pending_compositions(world.officers[NORTH], [world.dataset_ids[NORTH]] * 2)
    assert len(composition.included) + len(composition.not_fitting) == 6 and composition.not_fitting
    approved, refused = _approve_in_queue_order(world)
    assert (tuple(approved), tuple(refused)) == (composition.included, composition.not_fitting)

    balances = world.check_ledger()
    assert {line.budget_id: line.balance for line in composition.after} == \
        {budget_id: b for budget_id, b in balances.items() if budget_id.startswith(f"datasets/{world.dataset_ids[NORTH]}")}
    assert composition.before != composition.after


def test_a_paused_shares_requests_are_predicted_not_to_fit(world: Cohort) -> None:
    _submit(world, world.maker, 1.0, 1e-7, 0)
    world.budgets.set_share_state(world.officers[NORTH], world.dataset_ids[NORTH], world.maker.id, ShareState.PAUSED, "review")
    [composition] = world.approvals.pending_compositions(world.operator, [world.dataset_ids[NORTH]])
    assert composition.included == () and len(composition.not_fitting) == 1
    assert composition.after == composition.before


def test_an_officer_gets_no_composition_for_another_hospitals_dataset(world: Cohort) -> None:
    _submit(world, world.maker, 1.0, 1e-7, 0)
    assert world.approvals.pending_compositions(world.officers[1], [world.dataset_ids[NORTH]]) == []
