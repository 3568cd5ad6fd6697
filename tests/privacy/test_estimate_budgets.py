"""A dry run's budgets read exactly like GetBudgets' (issue 17 item 6): the same cap, reserved, spent,
remaining and manufacturer for the same budget, `remaining_after` that budget once the request is
reserved; and a request the budget cannot cover says so — never auto_approve with negative ε left."""

from __future__ import annotations

import re

import pytest

from cleanroom.cli import render
from cleanroom.domain.privacy import Privacy
from cleanroom.privacy.ledger import SpendRequest
from cleanroom.sdk import Client
from cleanroom.statistics.engine import Query
from tests.privacy.test_budget_answers import hospital_officer_and_maker

SHARED_FIELDS = ("name", "manufacturer", "manufacturer_display_name", "cap", "reserved", "spent", "remaining")


@pytest.fixture
def world(running, tmp_path):
    """Acme's share (ε 4) has spent 1 and holds 0.5 reserved; the dataset-wide cap is ε 10; the policy
    would auto-approve anything up to ε 100, so only the budget can refuse."""
    dataset, officer_token, maker_id, maker_token = hospital_officer_and_maker(running, tmp_path)
    officer, maker = Client(running.address, officer_token), Client(running.address, maker_token)
    officer.set_budget(dataset, epsilon=10, delta=1e-5, reason="hospital total")
    officer.share_dataset(dataset, f"principals/{maker_id}", epsilon=4, delta=1e-5, reason="pilot")
    officer.set_approval_policy(dataset, max_epsilon=100, auto_approve_epsilon=100, reason="budget decides")
    ledger, dataset_id = running.app.ledger, dataset.removeprefix("datasets/")
    spent = ledger.reserve(SpendRequest(dataset_id, maker_id, "training", "jobs/a", Privacy.cost(1, 0)), actor_id="system")
    ledger.release(spent.id, Privacy.cost(1, 0))
    ledger.reserve(SpendRequest(dataset_id, maker_id, "training", "jobs/b", Privacy.cost(0.5, 0)), actor_id="system")
    yield {"dataset": dataset, "maker": maker, "officer": officer, "maker_name": f"principals/{maker_id}"}
    officer.close()
    maker.close()


def shown(budget) -> dict[str, object]:
    return {name: getattr(budget, name) for name in SHARED_FIELDS}


def test_estimate_query_budgets_read_like_get_budgets(world) -> None:
    maker = world["maker"]
    (share,) = maker.get_budgets(world["dataset"]).budgets
    estimate = maker.estimate_query(world["dataset"], Query(kind="count", epsilon=0.25)).budget
    assert estimate.decision == "auto_approve" and estimate.fits
    (before,) = estimate.remaining_before
    assert shown(before) == shown(share)
    assert before.manufacturer == world["maker_name"]
    assert (before.cap.epsilon, before.spent.epsilon, before.reserved.epsilon, before.remaining.epsilon) == (4, 1, 0.5, 2.5)
    (after,) = estimate.remaining_after
    assert (after.name, after.manufacturer, after.cap, after.spent) == (share.name, share.manufacturer, share.cap, share.spent)
    assert (after.reserved.epsilon, after.reserved.epsilon_exact) == (0.75, "0.75")
    assert (after.remaining.epsilon, after.remaining.epsilon_exact) == (2.25, "2.25")


def test_an_officers_estimate_shows_both_budgets_as_get_budgets_does(world) -> None:
    officer = world["officer"]
    budgets = {b.name: b for b in officer.get_budgets(world["dataset"]).budgets}
    estimate = officer.estimate_cost(world["dataset"], epsilon=0.25, delta=0, manufacturer=world["maker_name"])
    assert {b.name: shown(b) for b in estimate.remaining_before} == {name: shown(b) for name, b in budgets.items()}
    whole = next(b for b in estimate.remaining_after if not b.manufacturer)
    assert (whole.cap.epsilon, whole.spent.epsilon, whole.reserved.epsilon, whole.remaining.epsilon) == (10, 1, 0.75, 8.25)


def test_an_over_budget_dry_run_states_the_refusal(world) -> None:
    estimate = world["maker"].estimate_query(world["dataset"], Query(kind="count", epsilon=3)).budget
    assert not estimate.fits
    assert estimate.decision == "refused"
    assert estimate.reasons and any("budget" in reason for reason in estimate.reasons)
    assert all(b.remaining.epsilon >= 0 for b in (*estimate.remaining_before, *estimate.remaining_after))
    assert not estimate.remaining_after, "nothing would be reserved: there is no 'after'"
    shown_to_a_person = render.cost_estimate(estimate)
    assert ": refused;" in shown_to_a_person and shown_to_a_person.rstrip().endswith("does not fit")
    assert not re.search(r"(?<![\w.])-\d", shown_to_a_person), "no negative ε left"
