"""The officer's inbox against a real console and server: pending statistics queries made through
the real API, decided through the console's forms, checked through the API."""

from __future__ import annotations

from html import unescape

from cleanroom.domain.identity import Role
from cleanroom.domain.privacy import Privacy
from cleanroom.privacy.ledger import SpendRequest
from cleanroom.sdk import Client
from tests.api.test_datasets_api import _rows, _schema, _write_csv
from tests.console.hospital_world import Hospitals, page_text


def _reserved(world: Hospitals) -> set[float]:
    return {b.reserved.epsilon for b in world.officer.get_budgets(world.dataset).budgets}


def test_an_officer_sees_a_pending_request_and_approves_it_through_the_form(console, hospitals) -> None:
    name = hospitals.pending_query(3.0)
    request_id = name.removeprefix("privacyRequests/")
    officer = console.sign_in_as(hospitals.north_officers[0])
    inbox = officer.get("/inbox")
    assert inbox.status == 200
    text = page_text(inbox.body)
    assert f'href="/inbox/{request_id}"' in inbox.body and "statistics query" in text and "Acme Devices" in text
    assert "<meter" in inbox.body and "10 ε now, 7 ε after" in text  # the dataset-wide budget: 10 before, 7 after
    assert "[stats-count (basic)]" in text  # the mechanism as the request recorded it
    assert "If you approve all of these" in text and "1 request counted" in text
    filtered = officer.get(f"/inbox?manufacturer=principals/{hospitals.maker_id}&dataset={hospitals.dataset}")
    assert f'href="/inbox/{request_id}"' in filtered.body
    assert f'href="/inbox/{request_id}"' not in officer.get("/inbox?manufacturer=principals/nobody").body

    detail = officer.get(f"/inbox/{request_id}")
    assert detail.status == 200 and 'name="reason"' in detail.body and "required" in detail.body
    assert "What it would run count" in page_text(detail.body)
    no_reason = officer.post(f"/inbox/{request_id}", {"decision": "approve", "reason": ""})
    assert no_reason.status == 303 and "error=" in no_reason.location
    assert [r.name for r in hospitals.officer.pending_requests()] == [name]  # nothing decided without a reason

    done = officer.post(f"/inbox/{request_id}", {"decision": "approve", "reason": "one population count"})
    assert done.status == 303 and done.location.startswith("/inbox?notice=")
    assert "approved" in page_text(officer.follow(done).body)
    assert list(hospitals.officer.pending_requests()) == []
    assert _reserved(hospitals) == {3.0}  # reserved on the dataset and the share
    assert officer.get(f"/inbox/{request_id}").status == 404  # decided: no longer in the inbox


def test_a_rejection_records_its_reason_and_reserves_nothing(console, hospitals) -> None:
    name = hospitals.pending_query(2.0)
    officer = console.sign_in_as(hospitals.north_officers[0])
    done = officer.post(f"/inbox/{name.removeprefix('privacyRequests/')}", {"decision": "reject", "reason": "not in the protocol"})
    assert done.status == 303 and "rejected" in unescape(done.location.replace("%20", " "))
    assert list(hospitals.officer.pending_requests()) == []
    report = hospitals.officer.get_budgets(hospitals.dataset)
    assert {(b.reserved.epsilon, b.spent.epsilon, b.remaining.epsilon) for b in report.budgets} == {(0.0, 0.0, 10.0), (0.0, 0.0, 8.0)}
    rejection = [json for json in hospitals.officer.export_audit_log() if '"request.rejected"' in json]
    assert rejection and "not in the protocol" in rejection[-1]


def test_two_officers_must_approve_and_the_same_officer_twice_is_refused_in_the_apis_words(console, hospitals) -> None:
    hospitals.officer.set_approval_policy(hospitals.dataset, max_epsilon=5, auto_approve_epsilon=1, approvals_required=2,
                                          reason="four eyes")
    name = hospitals.pending_query(3.0)
    path = f"/inbox/{name.removeprefix('privacyRequests/')}"
    first = console.sign_in_as(hospitals.north_officers[0])
    assert "2 different officers" in page_text(first.get(path).body)
    recorded = first.post(path, {"decision": "approve", "reason": "fine by me"})
    assert recorded.status == 303 and recorded.location.startswith(path + "?notice=")
    page = page_text(first.follow(recorded).body)
    assert "Approvals so far: 1 of 2" in page and "(you)" in page and "not you" in page
    again = first.post(path, {"decision": "approve", "reason": "I insist"})
    assert again.status == 303 and again.location.startswith(path + "?error=")
    refusal = page_text(first.follow(again).body)
    assert "officer" in refusal.lower() and "Traceback" not in refusal
    assert _reserved(hospitals) == {0.0}  # still nothing reserved
    second = console.sign_in_as(hospitals.north_officers[1])
    done = second.post(path, {"decision": "approve", "reason": "agreed"})
    assert done.status == 303 and done.location.startswith("/inbox?notice=")
    assert _reserved(hospitals) == {3.0}


def test_other_roles_get_403_and_another_hospitals_officer_sees_nothing(console, hospitals) -> None:
    name = hospitals.pending_query(3.0)
    request_id = name.removeprefix("privacyRequests/")
    for role in (Role.DATA_OWNER, Role.MANUFACTURER):
        assert console.signed_in(role).get("/inbox").status == 403
    owner = console.sign_in_as(hospitals.owner)
    assert owner.get(f"/inbox/{request_id}").status == 403
    stranger = console.sign_in_as(hospitals.south_officer)
    assert request_id not in stranger.get("/inbox").body
    assert stranger.get(f"/inbox/{request_id}").status == 404
    forged = stranger.post(f"/inbox/{request_id}", {"decision": "approve", "reason": "not mine"}, csrf_from="/inbox")
    assert forged.status == 404
    assert [r.name for r in hospitals.officer.pending_requests()] == [name]  # still pending


def test_an_officer_approves_its_own_hospitals_part_of_a_cohort_request(console, hospitals, tmp_path) -> None:
    running = hospitals.running
    _, owner_token = running.app.principals.create("South owner", Role.DATA_OWNER, actor="test", organisation_id=hospitals.south_org)
    with Client(running.address, owner_token) as owner, Client(running.address, hospitals.south_officer_token) as south:
        other = owner.upload_dataset(_write_csv(tmp_path / "south.csv", _rows(40, 2)), _schema()).name
        south.set_budget(other, epsilon=10, delta=1e-5, reason="hospital total")
        south.share_dataset(other, f"principals/{hospitals.maker_id}", epsilon=8, delta=1e-5, reason="pilot study")
    maker = running.app.principals.get(hospitals.maker_id)
    group = running.app.approvals.submit_cohort(maker, SpendRequest(hospitals.dataset_id, maker.id, "training", "jobs/cohort",
                                                                    Privacy.cost(2.0, 1e-7), cohort=(other.removeprefix("datasets/"),)))
    north_part = next(r.id for r in group.rows if r.dataset_id == hospitals.dataset_id)
    officer = console.sign_in_as(hospitals.north_officers[0])
    page = page_text(officer.get(f"/inbox/{north_part}").body)
    assert f"part of cohort request {group.resource_name}" in page and "training job" in page
    done = officer.post(f"/inbox/{north_part}", {"decision": "approve", "reason": "fine for North"})
    assert "approved for your hospital" in page_text(officer.follow(done).body)
    assert _reserved(hospitals) == {0.0}  # nothing held until South approves its part
