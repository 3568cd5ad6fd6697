"""Budgets and policy pages against a real console and server: the figures, the spend chart from the
real ledger, the policy editor and cap form checked through the API, the preview's numbers from the
statistics engine, and another hospital's officer finding nothing."""

from __future__ import annotations

import re

import pytest

from cleanroom.domain.identity import Role
from cleanroom.domain.privacy import Mechanism, Privacy
from cleanroom.privacy.ledger import SpendRequest
from cleanroom.statistics.engine import Query, expected_error
from tests.console.hospital_world import Hospitals, page_text


def _spend(world: Hospitals, epsilon: float, actual: float) -> None:
    """A reservation and its commit through the real ledger, as a finished query leaves them."""
    ledger = world.running.app.ledger  # type: ignore[attr-defined]
    spend = ledger.reserve(SpendRequest(world.dataset_id, world.maker_id, "statistics", f"queries/t{epsilon}",
                                        Privacy.cost(epsilon, 0), Mechanism("stats-count", "basic")), actor_id=world.maker_id)
    ledger.release(spend.id, Privacy.cost(actual, 0))


def test_the_dataset_page_shows_every_budget_and_the_spend_chart_with_its_table(console, hospitals) -> None:
    _spend(hospitals, 1.5, 1.5)
    _spend(hospitals, 1.0, 0.5)   # half refunded: only 0.5 is spent
    officer = console.sign_in_as(hospitals.north_officers[0])
    index = officer.get("/budgets")
    assert index.status == 200 and f'href="/budgets/{hospitals.dataset_id}"' in index.body
    page = officer.get(f"/budgets/{hospitals.dataset_id}")
    assert page.status == 200
    text = page_text(page.body)
    assert "whole dataset" in text and "Acme Devices" in text
    budgets = re.search(r'<table class="budget-table">.*?</table>', page.body, re.S)
    assert budgets
    rows = re.findall(r'<tr>\s*<th scope="row">(.*?)</th>(.*?)</tr>', budgets.group(0), re.S)
    cells = {page_text(head).strip(): [c.strip() for c in re.findall(r'<td class="num">([^<]*)</td>', rest)] for head, rest in rows}
    assert cells["whole dataset"][:4] == ["10", "2", "0", "8"]  # cap, spent, reserved, remaining
    assert cells["Acme Devices (share)"][:4] == ["8", "2", "0", "6"]
    svg = re.search(r"<svg[^>]*role=\"img\".*?</svg>", page.body, re.S)
    assert svg and "<title" in svg.group(0) and "2 commits from the ledger, 2 ε spent in all, against a cap of 10 ε" in page_text(svg.group(0))
    assert svg.group(0).count("<polyline") == 1
    table = re.search(r'<table class="spend-table">.*?</table>', page.body, re.S)
    assert table
    spends = [[c.strip() for c in re.findall(r'<td class="num">([^<]*)</td>', row)] for row in re.findall(r"<tr>(.*?)</tr>", table.group(0), re.S)[1:]]
    assert spends == [["1.5", "1.5"], ["0.5", "2"]]  # each commit's ε and the running total
    assert "stats-count (basic)" in table.group(0)


def test_the_policy_form_changes_the_policy_and_an_auditor_may_only_read_it(console, hospitals) -> None:
    officer = console.sign_in_as(hospitals.north_officers[0])
    path = f"/budgets/{hospitals.dataset_id}"
    saved = officer.post(path, {"action": "policy", "max_epsilon": "4", "max_delta": "1e-6", "auto_approve_epsilon": "0.5",
                                "approvals_required": "2", "stats_rows_per_patient": "3", "require_privacy_audit": "on",
                                "reason": "tighter after review"})
    assert saved.status == 303 and "notice=" in saved.location
    policy = hospitals.officer.get_budgets(hospitals.dataset).policy
    assert (policy.max_epsilon_per_request, policy.max_delta_per_request, policy.auto_approve_epsilon, policy.approvals_required,
            policy.stats_rows_per_patient, policy.require_privacy_audit) == (4, 1e-6, 0.5, 2, 3, True)
    refused = officer.post(path, {"action": "policy", "max_epsilon": "-1", "approvals_required": "1", "reason": "oops"})
    assert refused.status == 303 and "error=" in refused.location  # the API's refusal, in its words, back on the page
    assert "Traceback" not in page_text(officer.follow(refused).body)
    assert hospitals.officer.get_budgets(hospitals.dataset).policy.max_epsilon_per_request == 4  # unchanged

    capped = officer.post(path, {"action": "cap", "manufacturer": f"principals/{hospitals.maker_id}", "epsilon": "6", "delta": "1e-5",
                                 "reason": "smaller pilot"})
    assert capped.status == 303 and "notice=" in capped.location
    share = next(b for b in hospitals.officer.get_budgets(hospitals.dataset).budgets if b.manufacturer)
    assert share.cap.epsilon == 6

    auditor = console.signed_in(Role.AUDITOR)
    readable = auditor.get(path)
    assert readable.status == 200 and 'name="max_epsilon"' not in readable.body and "tighter" not in readable.body
    assert "Officers who must approve" in page_text(readable.body)
    denied = auditor.post(path, {"action": "policy", "max_epsilon": "50", "approvals_required": "1", "reason": "mine now"})
    assert denied.status == 403
    assert hospitals.officer.get_budgets(hospitals.dataset).policy.max_epsilon_per_request == 4


def test_the_preview_counts_requests_and_shows_the_engines_expected_error(console, hospitals) -> None:
    officer = console.sign_in_as(hospitals.north_officers[0])
    page = officer.get(f"/budgets/{hospitals.dataset_id}?job_epsilon=3&job_delta=0&query_epsilon=0.3&lower=0&upper=50")
    allowance = re.search(r'<table class="allowance">.*?</table>', page.body, re.S)
    assert allowance
    rows = {page_text(h).strip(): [c.strip() for c in re.findall(r'<td class="num">([^<]*)</td>', r)]
            for h, r in re.findall(r'<th scope="row">(.*?)</th>(.*?)</tr>', allowance.group(0), re.S)}
    assert rows == {"whole dataset": ["10", "3", "33"], "Acme Devices": ["8", "2", "26"]}  # 10/3, 10/0.3; 8/3, 8/0.3
    errors = re.search(r'<table class="query-error">.*?</table>', page.body, re.S)
    assert errors and "Laplace" in errors.group(0)
    count = expected_error(Query(kind="count", epsilon=0.3), schema=[("value", "float")])["count"]
    mean = expected_error(Query(kind="mean", column="value", bounds=(0, 50), epsilon=0.3), schema=[("value", "float")])
    shown = page_text(errors.group(0))
    assert f"count count {count:.4g}" in shown and f"sum {mean['sum']:.4g}" in shown
    bad = officer.get(f"/budgets/{hospitals.dataset_id}?query_epsilon=-1")
    assert bad.status == 200 and "cannot be computed" in page_text(bad.body)


def test_another_hospitals_officer_and_a_manufacturer_find_nothing(console, hospitals) -> None:
    stranger = console.sign_in_as(hospitals.south_officer)
    assert stranger.get(f"/budgets/{hospitals.dataset_id}").status == 404
    assert hospitals.dataset_id not in stranger.get("/budgets").body
    assert stranger.post(f"/budgets/{hospitals.dataset_id}", {"action": "cap", "epsilon": "100", "delta": "1e-5", "reason": "x"},
                         csrf_from="/budgets").status == 404
    assert hospitals.officer.get_budgets(hospitals.dataset).budgets[0].cap.epsilon == 10
    assert console.signed_in(Role.MANUFACTURER).get(f"/budgets/{hospitals.dataset_id}").status == 404


def test_the_preview_counts_in_the_ledgers_units_and_the_chart_steps_at_each_commit() -> None:
    from cleanroom.console.pages.budget_chart import chart, spend_points
    from cleanroom.console.pages.budget_preview import how_many
    from cleanroom.v1 import privacy_pb2

    assert how_many(3.0, 0.0, 0.1, 0.0) == 30  # not 29 from 3.0 / 0.1 in floating point
    assert how_many(1.0, 1e-5, 0.3, 4e-6) == 2  # δ runs out first
    assert how_many(1.0, 1e-5, 0.0, 0.0) == 0

    def event(seq: int, kind: str, budgets: list[str], epsilon: float) -> privacy_pb2.LedgerEvent:
        return privacy_pb2.LedgerEvent(seq=seq, kind=kind, budgets=budgets, amount=privacy_pb2.PrivacyAmount(epsilon=epsilon))

    share = "datasets/d/manufacturers/m"
    events = [event(2, "commit", ["datasets/d", share], 1.0), event(1, "cap", ["datasets/d"], 4.0),
              event(3, "reserve", ["datasets/d", share], 2.0), event(4, "commit", ["datasets/d", share], 2.0),
              event(5, "commit", ["datasets/other"], 9.0)]
    points = spend_points("datasets/d", events, {share: "Acme"})
    assert [(p.seq, p.cumulative, p.who) for p in points] == [(2, 1.0, "Acme"), (4, 3.0, "Acme")]
    drawn = chart(points, cap=4.0)
    *_, last = drawn.polyline.split()
    assert float(last.split(",")[1]) == pytest.approx(drawn.cap_y + (drawn.bottom_edge - drawn.cap_y) / 4)  # 3 of 4 ε up the axis
