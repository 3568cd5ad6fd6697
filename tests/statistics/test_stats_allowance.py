"""Statistics allowances and the group commit, on SQLite and a real PostgreSQL: every draw is paid
exactly once when the allowance closes, unused budget comes back, a crash over-charges and never
under-charges, and other holders of the dataset budget are not starved."""

from __future__ import annotations

import threading

import pytest

from cleanroom.domain.approvals import ApprovalPolicy, RequestState
from cleanroom.domain.audit import verify_chain
from cleanroom.domain.errors import CleanroomError
from cleanroom.domain.idempotency import RequestKey
from cleanroom.domain.privacy import ZERO, Balance, EventKind, Privacy, share_budget_id
from cleanroom.privacy.approvals import ApprovalService
from cleanroom.privacy.budgets import BudgetService
from cleanroom.privacy.ledger import BudgetExhausted, Ledger, SpendRequest
from cleanroom.statistics.allowance import Allowances, allowance_size
from cleanroom.storage import audit_repo, privacy_repo, request_repo
from cleanroom.storage.db import Database, migrate
from cleanroom.storage.group_commit import Answered, GroupCommit, NotCommitted
from tests.ledger_fixtures import World, build_world

QUERY = Privacy.cost(0.01, 0)


@pytest.fixture
def world(database_url: str):
    db = Database(database_url)
    migrate(db.engine)
    world = build_world(db)
    world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(10, 1e-5), "total")
    for maker in world.makers:
        world.budgets.share(world.officer, world.dataset_id, maker.id, Privacy.cap(5, 1e-5), "pilot")
    yield world
    db.dispose()


@pytest.fixture
def journal(world: World):
    journal = GroupCommit(world.db)
    yield journal
    journal.close()


def _allowances(world: World, journal: GroupCommit, **kwargs) -> Allowances:
    options = {"queries": 64, "idle_seconds": 3600.0} | kwargs
    return Allowances(world.ledger, journal, **options)


def _request(world: World, cost: Privacy = QUERY, maker: int = 0) -> SpendRequest:
    return SpendRequest(world.dataset_id, world.makers[maker].id, "statistics", "queries/q", cost, workload="ab" * 32)


def _events(world: World, kind: EventKind | None = None):
    with world.db.read() as session:
        events = privacy_repo.events(session)
    return [e for e in events if e.spend_id and (kind is None or e.kind is kind)]


def _share(world: World, maker: int = 0) -> Balance:
    with world.db.read() as session:
        return privacy_repo.get_balance(session, share_budget_id(world.dataset_id, world.makers[maker].id))


def _answer(allowances: Allowances, world: World, cost: Privacy = QUERY, maker: int = 0, *, warm: bool = True):
    draw = allowances.draw(_request(world, cost, maker), warm=warm)
    allowances.open_data(draw)
    allowances.finish(draw, spent=True)
    return draw


def test_the_size_is_bounded_by_the_share_and_a_quarter_of_the_dataset_budget() -> None:
    q, plenty = Privacy(10_000, 0), Balance(Privacy(10**9, 10**9))

    def size(dataset: Balance = plenty, share: Balance = plenty, shape: Privacy = q, queries: int = 64, cost: Privacy = q) -> Privacy:
        return allowance_size(cost, shape=shape, queries=queries, dataset=dataset, share=share)

    assert size() == Privacy(640_000, 0)
    assert size(share=Balance(Privacy(100_000, 0))) == Privacy(100_000, 0)
    assert size(dataset=Balance(Privacy(200_000, 0))) == Privacy(50_000, 0)
    assert size(dataset=Balance(Privacy(20_000, 0))) == q  # never below the query: the reservation decides whether that fits
    assert size(shape=Privacy(10_000, 1_000), queries=8) == Privacy(80_000, 8_000)
    # a larger query seen before shapes the size, but never pushes it past what is left
    assert size(shape=Privacy(1_000_000, 0), share=Balance(Privacy(300_000, 0))) == Privacy(300_000, 0)
    assert size(shape=Privacy(1_000_000, 0), share=Balance(Privacy(5_000, 0))) == q


def test_a_burst_is_one_reservation_and_commits_exactly_what_it_drew(world, journal) -> None:
    allowances = _allowances(world, journal)
    draws = [_answer(allowances, world) for _ in range(40)]
    assert len({d.spend_id for d in draws}) == 1
    assert len(_events(world, EventKind.RESERVE)) == 1
    allowances.settle()
    (reserve,), (commit,), (refund,) = (_events(world, k) for k in (EventKind.RESERVE, EventKind.COMMIT, EventKind.REFUND))
    assert commit.amount == Privacy(40 * QUERY.epsilon, 0)
    assert commit.amount + refund.amount == reserve.amount
    share = _share(world)
    assert share.spent == commit.amount and share.reserved == ZERO


def test_a_draw_whose_data_was_never_touched_costs_nothing(world, journal) -> None:
    allowances = _allowances(world, journal)
    _answer(allowances, world)
    untouched = allowances.draw(_request(world), warm=True)
    allowances.finish(untouched, spent=False)  # e.g. the worker could not start
    touched = allowances.draw(_request(world), warm=True)
    allowances.open_data(touched)
    allowances.finish(touched, spent=True)  # failed after its data was opened: spent
    allowances.settle()
    (commit,) = _events(world, EventKind.COMMIT)
    assert commit.amount == Privacy(2 * QUERY.epsilon, 0)


def test_an_allowance_that_never_opened_data_is_refunded_whole(world, journal) -> None:
    allowances = _allowances(world, journal)
    draw = allowances.draw(_request(world), warm=False)  # no warm worker: not decrypted at birth
    allowances.finish(draw, spent=False)
    allowances.settle()
    assert _events(world, EventKind.COMMIT) == []
    (refund,) = _events(world, EventKind.REFUND)
    assert refund.amount == _events(world, EventKind.RESERVE)[0].amount


def test_a_crash_commits_the_whole_allowance_never_less_than_was_answered(world, journal) -> None:
    allowances = _allowances(world, journal)
    for _ in range(5):
        _answer(allowances, world, warm=False)  # the first opening marks the allowance decrypted
    # the process dies here: nothing settled; a new process reconciles at start-up
    outcome = Ledger(world.db).recover()
    assert outcome == {"committed": 1, "refunded": 0}
    (reserve,), (commit,) = _events(world, EventKind.RESERVE), _events(world, EventKind.COMMIT)
    assert commit.amount == reserve.amount and commit.amount.epsilon >= 5 * QUERY.epsilon


def test_a_larger_query_closes_the_allowance_and_opens_a_fitting_one(world, journal) -> None:
    allowances = _allowances(world, journal, queries=4)
    first = [_answer(allowances, world) for _ in range(4)]
    bigger = _answer(allowances, world, Privacy.cost(0.02, 1e-9))
    assert bigger.spend_id != first[0].spend_id
    allowances.settle()
    commits = sorted(e.amount.epsilon for e in _events(world, EventKind.COMMIT))
    assert commits == sorted([QUERY.epsilon * 4, Privacy.cost(0.02, 0).epsilon])


def test_concurrent_queries_are_each_paid_once(world, journal) -> None:
    allowances = _allowances(world, journal, queries=16)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(25):
                _answer(allowances, world)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    allowances.settle()
    assert not errors
    assert sum(e.amount.epsilon for e in _events(world, EventKind.COMMIT)) == 200 * QUERY.epsilon
    assert 1 <= len(_events(world, EventKind.RESERVE)) < 200 // 4
    assert _share(world).reserved == ZERO


def test_a_burst_that_uses_allowances_up_gets_larger_ones_until_it_pauses(world, journal) -> None:
    allowances = _allowances(world, journal, queries=4)
    for _ in range(4 + 8 + 16):
        _answer(allowances, world)
    sizes = [e.amount.epsilon // QUERY.epsilon for e in _events(world, EventKind.RESERVE)]
    assert sizes == [4, 8, 16]  # each used up by the burst: the next one twice as large
    allowances.sweep(now=float("inf"))  # the burst pauses
    _answer(allowances, world)
    assert _events(world, EventKind.RESERVE)[-1].amount.epsilon // QUERY.epsilon == 4


def test_an_idle_allowance_is_closed_by_the_sweep(world, journal) -> None:
    allowances = _allowances(world, journal, idle_seconds=5.0)
    _answer(allowances, world)
    assert allowances.sweep() == 0  # just used
    assert allowances.sweep(now=float("inf")) == 1
    journal.flush()
    assert len(_events(world, EventKind.COMMIT)) == 1 and _share(world).reserved == ZERO


def test_budget_held_by_this_servers_allowances_is_given_back_to_a_reservation_that_needs_it(world, journal) -> None:
    world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(0.2, 1e-5), "tight")
    allowances = _allowances(world, journal)
    _answer(allowances, world, Privacy.cost(0.05, 0), maker=0)   # holds max(1 query, a quarter of what is left)
    big = Privacy.cost(0.15, 0)
    draw = allowances.draw(_request(world, big, maker=1), warm=True)  # only fits once maker 0's allowance closes
    assert draw.cost == big
    allowances.finish(draw, spent=False)
    allowances.settle()
    with pytest.raises(BudgetExhausted):
        allowances.draw(_request(world, Privacy.cost(0.2, 0), maker=1), warm=True)


def test_the_dry_run_counts_an_open_allowance_as_the_callers(world, journal) -> None:
    allowances = _allowances(world, journal)
    _answer(allowances, world)
    held = allowances.unused(world.dataset_id, world.makers[0].id)
    assert held.epsilon == 63 * QUERY.epsilon
    assert allowances.unused(world.dataset_id, world.makers[1].id) == ZERO


def test_the_group_commit_keeps_order_and_survives_a_bad_item(world, journal) -> None:
    journal.submit(audit_repo.Record("principals/a", "test.one", "datasets/x"))

    def broken(session) -> None:
        raise RuntimeError("this write fails")

    key = RequestKey(world.makers[0].id, "RunQuery", "r-1")
    journal.submit(broken, audit_repo.Record("principals/a", "test.two", "datasets/x"), Answered(key, "f" * 64, b"answer"))
    journal.submit(Answered(key, "e" * 64, b"a later answer"))  # the first answer stays
    assert journal.flush()
    with world.db.read() as session:
        actions = [e.action for e in audit_repo.entries(session) if e.action.startswith("test.")]
        stored = request_repo.stored_request(session, key)
        chain = verify_chain(audit_repo.entries(session), stored_head=audit_repo.head(session))
    assert actions == ["test.one", "test.two"]  # the bad item was dropped alone, in order
    assert stored == ("f" * 64, b"answer")
    assert request_repo.stored_request(world.db.lookup(), key) == stored  # the hot path's driver read agrees
    assert chain.ok


def test_a_committed_record_is_written_before_commit_returns_and_a_failed_one_raises(world) -> None:
    journal = GroupCommit(world.db, linger=3600.0)  # a waiting caller must cut the lingering short
    try:
        def broken(session) -> None:
            raise RuntimeError("this write fails")

        journal.submit(audit_repo.Record("principals/a", "test.trailing", "datasets/x"))
        journal.commit(audit_repo.Record("principals/a", "test.waited", "datasets/x"), timeout=60)
        with world.db.read() as session:  # durable: another session reads it at once
            actions = [e.action for e in audit_repo.entries(session) if e.action.startswith("test.")]
        assert actions == ["test.trailing", "test.waited"]
        journal.submit(broken)  # a neighbour's failure is not this caller's
        journal.commit(audit_repo.Record("principals/a", "test.after", "datasets/x"), timeout=60)
        with pytest.raises(NotCommitted):
            journal.commit(audit_repo.Record("principals/a", "test.last", "datasets/x"), broken, timeout=60)
    finally:
        journal.close()


def test_a_reservation_refused_outright_leaves_no_trace(world, journal) -> None:
    allowances = _allowances(world, journal)
    with pytest.raises(BudgetExhausted):
        allowances.draw(_request(world, Privacy.cost(6, 0)), warm=True)  # above the share's cap
    assert _events(world) == [] and _share(world).reserved == ZERO
    with world.db.read() as session:
        assert privacy_repo.open_spends(session) == []


def test_a_job_reservation_is_not_refused_for_budget_an_allowance_holds(world, journal) -> None:
    world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(0.3, 1e-5), "tight")
    world.budgets.set_policy(world.officer, world.dataset_id, ApprovalPolicy(auto_approve_epsilon=Privacy.cost(1, 0).epsilon), "routine")
    allowances = _allowances(world, journal)
    approvals = ApprovalService(world.db, world.ledger, release_held=allowances.release_dataset)
    _answer(allowances, world, Privacy.cost(0.04, 0), maker=0)  # holds 0.075: a quarter of what was left
    job = SpendRequest(world.dataset_id, world.makers[1].id, "training", "jobs/j", Privacy.cost(0.25, 0))
    assert approvals.estimate(world.officer, world.dataset_id, world.makers[1].id, job.cost).fits is False
    assert approvals.submit(world.makers[1], job).state is RequestState.APPROVED  # once the allowance gave back 0.035
    (commit,) = _events(world, EventKind.COMMIT)
    assert commit.amount == Privacy.cost(0.04, 0)


def test_a_cap_lowered_to_what_is_spent_is_not_refused_for_budget_an_allowance_holds(world, journal) -> None:
    allowances = _allowances(world, journal)
    budgets = BudgetService(world.db, release_held=allowances.release_dataset)
    _answer(allowances, world, maker=0)  # holds 64 queries' worth
    assert _share(world).reserved.epsilon == 64 * QUERY.epsilon
    lowered = budgets.set_cap(world.officer, world.dataset_id, world.makers[0].id, Privacy.cost(0.05, 1e-6), "lowered")
    assert lowered.spent == QUERY and lowered.reserved == ZERO
    with pytest.raises(CleanroomError):  # below what is really spent: still refused
        budgets.set_cap(world.officer, world.dataset_id, world.makers[0].id, Privacy.cost(0.005, 1e-6), "too low")


def test_the_access_check_reads_the_policy_of_a_shared_dataset_only(world) -> None:
    reads = world.db.lookup()
    assert privacy_repo.shared_policy(reads, world.dataset_id, world.makers[0].id) == ApprovalPolicy()  # none set: defaults
    assert privacy_repo.shared_policy(reads, world.dataset_id, world.officer.id) is None  # not shared with
    assert privacy_repo.shared_policy(reads, "other", world.makers[0].id) is None
    policy = ApprovalPolicy(auto_approve_epsilon=Privacy.cost(0.5, 0).epsilon, stats_rows_per_patient=3)
    world.budgets.set_policy(world.officer, world.dataset_id, policy, "routine")
    reads = world.db.lookup()
    assert privacy_repo.shared_policy(reads, world.dataset_id, world.makers[0].id) == policy
    assert request_repo.stored_request(reads, RequestKey(world.makers[0].id, "RunQuery", "never")) is None
