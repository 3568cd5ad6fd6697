"""Ledger invariants (property tests), concurrency (32 racing reservers) and crash reconciliation,
on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.privacy import Privacy, SpendState, dataset_budget_id, replay, share_budget_id
from cleanroom.privacy.ledger import BudgetExhausted
from cleanroom.storage import privacy_repo
from cleanroom.storage.db import Database, default_url, migrate
from tests.ledger_fixtures import World, build_world


@pytest.fixture
def world(database_url: str):
    db = Database(database_url)
    migrate(db.engine)
    yield build_world(db)
    db.dispose()


def _balances(world: World):
    with world.db.transaction() as session:
        return privacy_repo.all_balances(session), privacy_repo.events(session)


def test_exact_units_do_not_drift(world: World) -> None:
    world.budgets.share(world.officer, world.dataset_id, world.makers[0].id, Privacy.cap(1.0, 1e-6), "pilot")
    world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(1.0, 1e-6), "hospital total")
    for _ in range(10):
        world.ledger.reserve(world.spend(Privacy.cost(0.1, 1e-7)), actor_id=world.officer.id)
    balances, _ = _balances(world)
    assert balances[dataset_budget_id(world.dataset_id)].remaining == Privacy(0, 0)
    with pytest.raises(BudgetExhausted):
        world.ledger.reserve(world.spend(Privacy(1, 0)), actor_id=world.officer.id)


def test_reservation_is_all_or_nothing(world: World) -> None:
    world.budgets.share(world.officer, world.dataset_id, world.makers[0].id, Privacy.cap(5, 1e-5), "pilot")
    world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(1, 1e-5), "hospital total")
    with pytest.raises(BudgetExhausted) as err:
        world.ledger.reserve(world.spend(Privacy.cost(2, 1e-6)), actor_id=world.officer.id)
    assert err.value.budget_ids == (dataset_budget_id(world.dataset_id),)
    balances, events = _balances(world)
    assert all(b.reserved == Privacy() for b in balances.values())  # the share budget was not touched either
    assert [e.kind.value for e in events] == ["cap", "cap"]


def test_release_commits_actual_and_refunds_rest(world: World) -> None:
    world.budgets.share(world.officer, world.dataset_id, world.makers[0].id, Privacy.cap(5, 1e-5), "pilot")
    world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(5, 1e-5), "total")
    spend = world.ledger.reserve(world.spend(Privacy.cost(2, 1e-6)), actor_id=world.officer.id)
    world.ledger.mark_decrypted(spend.id)
    done = world.ledger.release(spend.id, Privacy.cost(1.5, 1e-6))
    again = world.ledger.release(spend.id, Privacy.cost(1.5, 1e-6))  # idempotent
    assert done.state is SpendState.COMMITTED and again == done
    balances, events = _balances(world)
    share = balances[share_budget_id(world.dataset_id, world.makers[0].id)]
    assert share.spent == Privacy.cost(1.5, 1e-6) and share.reserved == Privacy()
    assert [e.kind.value for e in events][-2:] == ["commit", "refund"]


def test_failure_before_decryption_refunds_after_decryption_spends(world: World) -> None:
    world.budgets.share(world.officer, world.dataset_id, world.makers[0].id, Privacy.cap(5, 1e-5), "pilot")
    world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(5, 1e-5), "total")
    untouched = world.ledger.reserve(world.spend(Privacy.cost(1, 1e-6)), actor_id=world.officer.id)
    touched = world.ledger.reserve(world.spend(Privacy.cost(1, 1e-6)), actor_id=world.officer.id)
    world.ledger.mark_decrypted(touched.id)
    assert world.ledger.fail(untouched.id).state is SpendState.REFUNDED
    assert world.ledger.fail(touched.id).state is SpendState.COMMITTED
    balances, _ = _balances(world)
    assert balances[dataset_budget_id(world.dataset_id)].spent == Privacy.cost(1, 1e-6)


def test_recover_settles_each_open_spend_once(world: World) -> None:
    world.budgets.share(world.officer, world.dataset_id, world.makers[0].id, Privacy.cap(9, 1e-5), "pilot")
    world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(9, 1e-5), "total")
    never = world.ledger.reserve(world.spend(Privacy.cost(1, 1e-7)), actor_id=world.officer.id)
    decrypted = world.ledger.reserve(world.spend(Privacy.cost(2, 1e-7)), actor_id=world.officer.id)
    world.ledger.mark_decrypted(decrypted.id)
    assert world.ledger.recover() == {"committed": 1, "refunded": 1}
    assert world.ledger.recover() == {"committed": 0, "refunded": 0}
    balances, events = _balances(world)
    total = balances[dataset_budget_id(world.dataset_id)]
    assert total.spent == Privacy.cost(2, 1e-7) and total.reserved == Privacy()
    assert replay(events) == balances
    del never


def test_cap_never_below_spent_plus_reserved(world: World) -> None:
    world.budgets.share(world.officer, world.dataset_id, world.makers[0].id, Privacy.cap(5, 1e-5), "pilot")
    world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(5, 1e-5), "total")
    world.ledger.reserve(world.spend(Privacy.cost(3, 1e-6)), actor_id=world.officer.id)
    with pytest.raises(CleanroomError) as err:
        world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(2, 1e-5), "tighten")
    assert err.value.code is ErrorCode.FAILED_PRECONDITION
    world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(3, 1e-5), "tighten to what is used")


@pytest.mark.parametrize("admissible", [3])
def test_32_racing_reservers_exactly_the_admissible_succeed(world: World, admissible: int) -> None:
    world.budgets.share(world.officer, world.dataset_id, world.makers[0].id, Privacy.cap(100, 1e-5), "share")
    world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(admissible * 1.0, 1e-5), "admits a few")
    barrier = threading.Barrier(32)
    outcomes: list[str] = []

    def reserve() -> None:
        barrier.wait()
        try:
            world.ledger.reserve(world.spend(Privacy.cost(1.0, 1e-7)), actor_id=world.officer.id)
            outcomes.append("ok")
        except BudgetExhausted:
            outcomes.append("exhausted")

    threads = [threading.Thread(target=reserve) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == admissible and outcomes.count("exhausted") == 32 - admissible
    balances, events = _balances(world)
    assert balances[dataset_budget_id(world.dataset_id)].reserved == Privacy.cost(admissible * 1.0, admissible * 1e-7)
    assert replay(events) == balances


# --- property tests: random operation sequences against a real database -------------------------

operation = st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 1), st.integers(1, 3_000_000), st.integers(0, 10**11)),
    st.tuples(st.just("release"), st.integers(0, 40), st.integers(0, 100)),
    st.tuples(st.just("decrypt"), st.integers(0, 40)),
    st.tuples(st.just("fail"), st.integers(0, 40)),
    st.tuples(st.just("cap"), st.integers(0, 2), st.integers(1, 10_000_000), st.integers(1, 10**12)),
    st.tuples(st.just("recover")),
)


def _apply(world: World, spends: list, op: tuple) -> None:
    kind = op[0]
    try:
        if kind == "reserve":
            spends.append(world.ledger.reserve(world.spend(Privacy(op[2], op[3]), op[1]), actor_id=world.officer.id))
        elif kind in ("release", "decrypt", "fail") and spends:
            spend = spends[op[1] % len(spends)]
            if kind == "release":
                world.ledger.release(spend.id, Privacy(spend.reserved.epsilon * op[2] // 100, spend.reserved.delta * op[2] // 100))
            elif kind == "decrypt":
                world.ledger.mark_decrypted(spend.id)
            else:
                world.ledger.fail(spend.id)
        elif kind == "cap":
            maker = None if op[1] == 2 else world.makers[op[1]].id
            world.budgets.set_cap(world.officer, world.dataset_id, maker, Privacy(op[2], op[3]), "property test")
        elif kind == "recover":
            world.ledger.recover()
    except CleanroomError as error:
        assert error.code in (ErrorCode.PRIVACY_BUDGET_EXHAUSTED, ErrorCode.FAILED_PRECONDITION)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, max_size=25))
def test_ledger_invariants_hold_for_any_sequence(tmp_path_factory, ops) -> None:
    db = Database(default_url(tmp_path_factory.mktemp("ledger")))
    migrate(db.engine)
    world = build_world(db)
    for i, maker in enumerate(world.makers):
        world.budgets.share(world.officer, world.dataset_id, maker.id, Privacy(2_000_000 + i, 10**12), "start")
    world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy(3_000_000, 10**12), "start")
    spends: list = []
    for op in ops:
        _apply(world, spends, op)
    balances, events = _balances(world)
    for balance in balances.values():
        assert (balance.reserved + balance.spent).fits_in(balance.cap)  # never overspent
        assert balance.reserved.epsilon >= 0 and balance.reserved.delta >= 0  # refunds never exceed reservations
    assert replay(events) == balances  # the event log alone rebuilds every balance
    with db.transaction():
        for spend in spends:
            settled = [e for e in events if e.spend_id == spend.id and e.kind.value in ("commit", "refund")]
            total = sum((e.amount for e in settled), Privacy())
            assert total in (Privacy(), spend.reserved)  # settled exactly once, for exactly the reservation
    db.dispose()
