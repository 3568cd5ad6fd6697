"""The all-or-none cohort reservation under concurrency, on SQLite and on a real PostgreSQL: racing
cohort requests over overlapping datasets, from several services with their own connection pools
(like separate servers), never overspend a dataset's or a share's budget; a request short on one
site reserves nothing; racing officers' decisions reserve a group's spend exactly once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from cleanroom.domain.approvals import RequestState
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.privacy import Privacy, budget_ids_of, dataset_budget_id, share_budget_id
from cleanroom.privacy.approvals import ApprovalService
from cleanroom.privacy.ledger import BudgetExhausted, Ledger
from cleanroom.storage import privacy_repo
from cleanroom.storage.db import Database, migrate
from cleanroom.storage.tables import PrivacyRequestRow, SpendRow
from tests.privacy.cohort_world import Cohort, build_cohort

SERVERS = 3
COST = Privacy.cost(1.0, 1e-7)


@dataclass
class Racing:
    cohort: Cohort
    services: list[ApprovalService]  # one per "server", each with its own Database and Ledger


@pytest.fixture
def racing(database_url: str):
    db = Database(database_url)
    migrate(db.engine)
    cohort = build_cohort(db)
    for site in range(3):
        cohort.set_auto_approve(site, 2)
    others = [Database(database_url) for _ in range(SERVERS)]
    yield Racing(cohort, [ApprovalService(d, Ledger(d, owner=f"server{i}")) for i, d in enumerate(others)])
    for d in (db, *others):
        d.dispose()


def _race(count: int, action: Callable[[int], str]) -> list[str]:
    """Runs `action(i)` on `count` threads released together; each outcome, in thread order."""
    barrier = threading.Barrier(count)
    outcomes = [""] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = action(i)
        except BudgetExhausted:
            outcomes[i] = "exhausted"
        except CleanroomError as error:
            outcomes[i] = error.code.name
        except Exception as error:  # noqa: BLE001  # anything else (a deadlock, a lock timeout) fails the test below
            outcomes[i] = f"crash: {type(error).__name__}"

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def _stored(cohort: Cohort) -> tuple[int, int]:
    with cohort.db.read() as session:
        return (session.scalar(select(func.count()).select_from(PrivacyRequestRow)) or 0,
                session.scalar(select(func.count()).select_from(SpendRow)) or 0)


COMBOS = [(0, 1, 2), (0, 1), (1, 2), (0, 2), (2, 0, 1), (1, 0), (2,)]


def test_racing_cohort_requests_never_overspend_any_budget(racing: Racing) -> None:
    cohort = racing.cohort
    cohort.set_caps(dataset=(4, 6, 3), share=(5, 4, 10))  # the south share and the east dataset budget bind
    requests = [cohort.request(1.0, COMBOS[i % len(COMBOS)], reference=f"jobs/{i}") for i in range(28)]

    def submit(i: int) -> str:
        return racing.services[i % SERVERS].submit_cohort(cohort.maker, requests[i]).state.value

    outcomes = _race(len(requests), submit)
    assert set(outcomes) <= {"approved", "exhausted"}, outcomes
    won = [r for r, o in zip(requests, outcomes, strict=True) if o == "approved"]
    lost = [r for r, o in zip(requests, outcomes, strict=True) if o == "exhausted"]
    assert won and lost
    balances = cohort.check_ledger()  # nothing overspent; the events rebuild every balance
    for dataset_id in cohort.dataset_ids:
        charged = sum(1 for r in won if dataset_id in r.dataset_ids)
        for budget_id in budget_ids_of(dataset_id, cohort.maker.id):
            assert balances[budget_id].reserved == Privacy(COST.epsilon * charged, COST.delta * charged), budget_id
    for request in lost:  # each refusal was real: one of its budgets cannot take the cost even now
        budgets = [b for d in request.dataset_ids for b in budget_ids_of(d, cohort.maker.id)]
        assert any(not COST.fits_in(balances[b].remaining) for b in budgets)
    assert _stored(cohort) == (sum(len(r.dataset_ids) for r in won), len(won))  # the refused stored nothing


@pytest.mark.parametrize("short", ["dataset", "share"])
def test_a_request_that_fits_two_sites_but_not_the_third_reserves_nothing(racing: Racing, short: str) -> None:
    cohort = racing.cohort
    cohort.set_caps(dataset=(5, 5, 0.5 if short == "dataset" else 5), share=(5, 5, 0.5 if short == "share" else 5))
    before = cohort.state()
    with pytest.raises(BudgetExhausted) as err:
        racing.services[0].submit_cohort(cohort.maker, cohort.request(1.0))
    east = cohort.dataset_ids[2]
    assert err.value.budget_ids == ((dataset_budget_id(east),) if short == "dataset" else (share_budget_id(east, cohort.maker.id),))
    assert cohort.state() == before  # no balance moved, no ledger event written
    assert _stored(cohort) == (0, 0)  # no request row, no spend row


def test_racing_last_approvals_reserve_the_group_once(racing: Racing) -> None:
    cohort = racing.cohort
    cohort.set_caps(dataset=(9, 9, 9), share=(9, 9, 9))
    cohort.set_auto_approve(0, 0)
    cohort.set_auto_approve(1, 0)  # north and south ask their officers; east admits at once
    groups = [racing.services[0].submit_cohort(cohort.maker, cohort.request(1.0, reference=f"jobs/{g}")) for g in range(6)]

    def approve(i: int) -> str:
        group, site = groups[i // 2], i % 2
        return racing.services[i % SERVERS].approve(cohort.officers[site], group.rows[site].id, "ok").state.value

    outcomes = _race(2 * len(groups), approve)
    assert outcomes == ["approved"] * (2 * len(groups))
    with cohort.db.read() as session:
        spends = privacy_repo.open_spends(session)
        for group in groups:
            assert len({r.spend_id for r in privacy_repo.group_requests(session, group.id)} - {None}) == 1
    assert len(spends) == len(groups)  # one spend per group, never two, never none
    assert all(racing.services[0].group_outcome(g.id)[0] is RequestState.APPROVED for g in groups)
    balances = cohort.check_ledger()
    assert all(b.reserved == Privacy(COST.epsilon * len(groups), COST.delta * len(groups)) for b in balances.values())


def test_racing_approval_and_rejection_reserve_nothing(racing: Racing) -> None:
    cohort = racing.cohort
    cohort.set_caps(dataset=(9, 9, 9), share=(9, 9, 9))
    cohort.set_auto_approve(0, 0)
    cohort.set_auto_approve(1, 0)
    groups = [racing.services[0].submit_cohort(cohort.maker, cohort.request(1.0, reference=f"jobs/{g}")) for g in range(6)]

    def decide(i: int) -> str:
        group, site = groups[i // 2], i % 2
        service = racing.services[i % SERVERS]
        decide = service.approve if site == 0 else service.reject
        return decide(cohort.officers[site], group.rows[site].id, "decided").state.value

    outcomes = _race(2 * len(groups), decide)
    assert set(outcomes[1::2]) == {"rejected"}  # a rejection always lands
    assert set(outcomes[0::2]) <= {"approved", ErrorCode.ALREADY_DECIDED.name}  # the approval lost or came first
    assert all(racing.services[0].group_outcome(g.id) == (RequestState.REJECTED, None) for g in groups)
    assert _stored(cohort)[1] == 0
    assert all(b.reserved == Privacy() for b in cohort.check_ledger().values())
