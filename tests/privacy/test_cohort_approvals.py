"""Per-hospital approval of cohort requests: each hospital's officers see and decide their own row
only, the group is approved once every row is (and only then reserved on every dataset), a rejection
anywhere rejects the whole group, and each hospital's audit trail holds its own part only."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import func, select

from cleanroom.domain.approvals import ApprovalPolicy, RequestState
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.identity import Principal, Role, hash_token
from cleanroom.domain.pagination import PageRequest
from cleanroom.domain.privacy import EPSILON_SCALE, Privacy, dataset_budget_id, share_budget_id
from cleanroom.privacy.approvals import REJECTED_ELSEWHERE
from cleanroom.privacy.ledger import BudgetExhausted
from cleanroom.storage import audit_repo, clock, principal_repo, privacy_repo
from cleanroom.storage.db import Database, migrate
from cleanroom.storage.tables import PrivacyRequestRow, SpendRow
from cleanroom.wire.privacy import request_to_proto
from tests.privacy.cohort_world import Cohort, build_cohort

PAGE = PageRequest(size=50, after_id=None)


@pytest.fixture
def cohort(database_url: str):
    db = Database(database_url)
    migrate(db.engine)
    world = build_cohort(db)
    world.set_caps(dataset=(5, 5, 5), share=(5, 5, 5))
    yield world
    db.dispose()


def _stored(cohort: Cohort) -> tuple[int, int]:
    with cohort.db.read() as session:
        return (session.scalar(select(func.count()).select_from(PrivacyRequestRow)) or 0,
                session.scalar(select(func.count()).select_from(SpendRow)) or 0)


def _not_found(action) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CleanroomError) as err:
        action()
    assert err.value.code is ErrorCode.NOT_FOUND


def test_every_site_auto_approving_reserves_one_cohort_spend_at_once(cohort: Cohort) -> None:
    for site in range(3):
        cohort.set_auto_approve(site, 2)
    group = cohort.approvals.submit_cohort(cohort.maker, cohort.request(1.0))
    assert group.state is RequestState.APPROVED and group.spend_id is not None
    assert [r.dataset_id for r in group.rows] == cohort.dataset_ids  # site order kept
    assert {r.group_id for r in group.rows} == {group.id} and {r.spend_id for r in group.rows} == {group.spend_id}
    assert cohort.approvals.group_outcome(group.rows[2].id) == (RequestState.APPROVED, group.spend_id)
    balances = cohort.check_ledger()
    for dataset_id in cohort.dataset_ids:
        for budget_id in (dataset_budget_id(dataset_id), share_budget_id(dataset_id, cohort.maker.id)):
            assert balances[budget_id].reserved == Privacy.cost(1.0, 1e-7)


def test_group_is_approved_only_after_every_hospital_approves(cohort: Cohort) -> None:
    cohort.set_auto_approve(2, 2)  # the third hospital's policy admits it; the first two ask their officers
    group = cohort.approvals.submit_cohort(cohort.maker, cohort.request(1.0))
    assert [r.state for r in group.rows] == [RequestState.PENDING, RequestState.PENDING, RequestState.APPROVED]
    assert group.state is RequestState.PENDING and group.rows[2].spend_id is None
    cohort.approvals.approve(cohort.officers[0], group.rows[0].id, "fine for north")
    assert cohort.approvals.group_outcome(group.id) == (RequestState.PENDING, None)
    assert all(b.reserved == Privacy() for b in cohort.check_ledger().values())  # nothing held while a site waits
    decided = cohort.approvals.approve(cohort.officers[1], group.rows[1].id, "fine for south")
    state, spend_id = cohort.approvals.group_outcome(group.id)
    assert state is RequestState.APPROVED and spend_id is not None and decided.spend_id == spend_id
    with cohort.db.read() as session:
        assert {r.spend_id for r in privacy_repo.group_requests(session, group.id)} == {spend_id}
        spend = privacy_repo.get_spend(session, spend_id)
    assert spend is not None and spend.dataset_ids == tuple(cohort.dataset_ids)
    assert all(b.reserved == Privacy.cost(1.0, 1e-7) for b in cohort.check_ledger().values())


def test_an_officer_sees_and_decides_its_own_hospitals_row_only(cohort: Cohort) -> None:
    group = cohort.approvals.submit_cohort(cohort.maker, cohort.request(1.0))
    north, south = cohort.officers[0], cohort.officers[1]
    assert [r.dataset_id for r in cohort.approvals.pending(north, PAGE)] == [cohort.dataset_ids[0]]
    assert len(cohort.approvals.pending(cohort.operator, PAGE)) == 3  # the operator oversees every hospital
    _not_found(lambda: cohort.approvals.approve(north, group.rows[1].id, "not mine"))
    _not_found(lambda: cohort.approvals.reject(north, group.rows[1].id, "not mine"))
    _not_found(lambda: cohort.approvals.get(north, group.rows[1].id))
    _not_found(lambda: cohort.approvals.estimate(north, cohort.dataset_ids[1], cohort.maker.id, Privacy.cost(1, 1e-7)))
    assert cohort.approvals.get(south, group.rows[1].id).state is RequestState.PENDING
    assert [r.dataset_id for r in cohort.approvals.visible_group(north, group.rows[0])] == [cohort.dataset_ids[0]]
    assert len(cohort.approvals.visible_group(cohort.maker, group.rows[0])) == 3  # the requester sees its whole group
    message = request_to_proto(group.rows[0], cohort.approvals.visible_group(north, group.rows[0]))
    assert message.group == group.resource_name
    assert [(g.dataset, g.state) for g in message.group_requests] == [(f"datasets/{cohort.dataset_ids[0]}", "pending")]
    with cohort.db.read() as session:  # the refused attempts decided nothing
        assert [r.state for r in privacy_repo.group_requests(session, group.id)] == [RequestState.PENDING] * 3


def test_a_rejection_at_one_site_rejects_the_group_and_holds_nothing(cohort: Cohort) -> None:
    cohort.set_auto_approve(2, 2)
    group = cohort.approvals.submit_cohort(cohort.maker, cohort.request(1.0))
    cohort.approvals.approve(cohort.officers[0], group.rows[0].id, "fine for north")
    cohort.approvals.reject(cohort.officers[1], group.rows[1].id, "not for south")
    assert cohort.approvals.group_outcome(group.rows[0].id) == (RequestState.REJECTED, None)
    with pytest.raises(CleanroomError) as err:
        cohort.approvals.approve(cohort.officers[0], group.rows[0].id, "again")
    assert err.value.code is ErrorCode.ALREADY_DECIDED
    assert all(b.reserved == Privacy() and b.spent == Privacy() for b in cohort.check_ledger().values())
    assert _stored(cohort) == (3, 0)  # no spend was ever made, so nothing is owed back


def test_a_rejection_rejects_every_row_still_pending(cohort: Cohort) -> None:
    group = cohort.approvals.submit_cohort(cohort.maker, cohort.request(1.0))
    cohort.approvals.reject(cohort.officers[2], group.rows[2].id, "not for east")
    with cohort.db.read() as session:
        rows = privacy_repo.group_requests(session, group.id)
    assert [r.state for r in rows] == [RequestState.REJECTED] * 3
    assert [(r.decided_by, r.reason) for r in rows[:2]] == [("system", REJECTED_ELSEWHERE)] * 2
    assert cohort.approvals.pending(cohort.operator, PAGE) == []


def test_each_hospitals_audit_trail_holds_its_own_decision_only(cohort: Cohort) -> None:
    group = cohort.approvals.submit_cohort(cohort.maker, cohort.request(1.0))
    for site, officer in enumerate(cohort.officers):
        cohort.approvals.approve(officer, group.rows[site].id, f"fine for site {site}")
    with cohort.db.read() as session:
        entries = list(audit_repo.entries(session))
    for site, officer in enumerate(cohort.officers):
        own = [e for e in entries if e.target == f"datasets/{cohort.dataset_ids[site]}"]
        decisions = [e for e in own if e.action == "request.approved"]
        assert [(e.actor, e.details["request"], e.details["organisation"]) for e in decisions] == [
            (officer.resource_name, group.rows[site].resource_name, officer.organisation_id)]
        others = [o for o in cohort.officers if o is not officer]
        text = "".join(e.to_json() for e in own)
        assert not any(o.id in text for o in others)  # no other hospital's officer in this hospital's part
        assert not any(d in text for d in cohort.dataset_ids if d != cohort.dataset_ids[site])
        reserve = [e for e in own if e.action == "ledger.reserve"]
        assert len(reserve) == 1 and set(reserve[0].details["budgets"]) == {
            dataset_budget_id(cohort.dataset_ids[site]), share_budget_id(cohort.dataset_ids[site], cohort.maker.id)}


def test_the_operators_officer_decides_any_hospitals_row(cohort: Cohort) -> None:
    group = cohort.approvals.submit_cohort(cohort.maker, cohort.request(1.0))
    for row in group.rows:
        cohort.approvals.approve(cohort.operator, row.id, "platform review")
    assert cohort.approvals.group_outcome(group.id)[0] is RequestState.APPROVED


def test_a_short_budget_at_the_last_approval_rolls_the_decision_back(cohort: Cohort) -> None:
    group = cohort.approvals.submit_cohort(cohort.maker, cohort.request(1.0))
    cohort.approvals.approve(cohort.officers[0], group.rows[0].id, "ok")
    cohort.approvals.approve(cohort.officers[1], group.rows[1].id, "ok")
    cohort.set_caps(dataset=(5, 5, 0.5), share=(5, 5, 5))
    before = cohort.state()
    with pytest.raises(BudgetExhausted) as err:
        cohort.approvals.approve(cohort.officers[2], group.rows[2].id, "ok")
    assert err.value.budget_ids == (dataset_budget_id(cohort.dataset_ids[2]),)
    assert cohort.state() == before and _stored(cohort) == (3, 0)
    assert cohort.approvals.get(cohort.officers[2], group.rows[2].id).state is RequestState.PENDING
    cohort.set_caps(dataset=(5, 5, 5), share=(5, 5, 5))
    cohort.approvals.approve(cohort.officers[2], group.rows[2].id, "ok now")
    assert cohort.approvals.group_outcome(group.id)[0] is RequestState.APPROVED


def test_a_policy_refusal_at_one_site_names_it_and_stores_nothing(cohort: Cohort) -> None:
    policy = ApprovalPolicy(max_epsilon=round(0.5 * EPSILON_SCALE))
    cohort.budgets.set_policy(cohort.operator, cohort.dataset_ids[1], policy, "tight")
    with pytest.raises(CleanroomError) as err:
        cohort.approvals.submit_cohort(cohort.maker, cohort.request(1.0))
    assert err.value.code is ErrorCode.POLICY_REFUSED and f"datasets/{cohort.dataset_ids[1]}" in err.value.message
    assert _stored(cohort) == (0, 0)


def test_a_site_not_shared_with_the_requester_is_not_found(cohort: Cohort) -> None:
    stranger = Principal("maker2", "Maker 2", Role.MANUFACTURER, clock.now(), "org-maker2")
    with cohort.db.transaction() as session:
        principal_repo.add_principal(session, stranger, hash_token(stranger.id))
    cohort.budgets.share(cohort.operator, cohort.dataset_ids[0], stranger.id, Privacy.cap(5, 1e-5), "one site only")
    request = cohort.request(1.0)
    _not_found(lambda: cohort.approvals.submit_cohort(stranger, replace(request, manufacturer_id=stranger.id)))
    _not_found(lambda: cohort.approvals.submit_cohort(cohort.maker, replace(request, cohort=("d-nowhere",))))
    assert _stored(cohort) == (0, 0)


def test_a_site_named_twice_is_a_bad_request(cohort: Cohort) -> None:
    request = cohort.request(1.0, sites=(0, 1))
    with pytest.raises(CleanroomError) as err:
        cohort.approvals.submit_cohort(cohort.maker, replace(request, cohort=(cohort.dataset_ids[0],)))
    assert err.value.code is ErrorCode.BAD_REQUEST and _stored(cohort) == (0, 0)


def test_estimate_cohort_says_per_site_whether_it_fits(cohort: Cohort) -> None:
    cohort.set_caps(dataset=(5, 5, 5), share=(5, 0.5, 5))
    estimates = cohort.approvals.estimate_cohort(cohort.maker, cohort.dataset_ids, cohort.maker.id, Privacy.cost(1.0, 1e-7))
    assert [e.fits for e in estimates] == [True, False, True]
    assert [line.budget_id for line in estimates[1].balances] == [share_budget_id(cohort.dataset_ids[1], cohort.maker.id)]
