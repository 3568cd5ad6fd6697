"""Per-hospital approval of a cohort request over real gRPC: each hospital's officer lists and decides
its own hospital's request only (another's is NOT_FOUND), sees only its own part of the group, and
the group is approved, and reserved on both hospitals' budgets, once both have approved."""

from __future__ import annotations

import grpc
import pytest

from cleanroom.domain.approvals import RequestState
from cleanroom.domain.identity import Role
from cleanroom.domain.organisations import OrgKind
from cleanroom.domain.privacy import Privacy
from cleanroom.privacy.ledger import SpendRequest
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.storage import principal_repo
from tests.api.test_datasets_api import _rows, _schema, _write_csv


@pytest.fixture
def hospitals(running, tmp_path):
    """Two hospitals (an owner, an officer and a dataset each, shared with one manufacturer) and the
    operator's officer; no policy auto-approves, so every cohort request waits for officers."""
    principals = running.app.principals
    maker_id, maker_token = running.principal(Role.MANUFACTURER, "Acme")
    _, operator_token = running.principal(Role.PRIVACY_OFFICER, "Operator officer")
    sites, tokens = [], []
    for name in ("North", "South"):
        org = principals.create_organisation(f"{name} hospital", OrgKind.HOSPITAL, actor="test")
        _, owner_token = principals.create(f"{name} owner", Role.DATA_OWNER, actor="test", organisation_id=org.id)
        _, officer_token = principals.create(f"{name} officer", Role.PRIVACY_OFFICER, actor="test", organisation_id=org.id)
        with Client(running.address, owner_token) as owner:
            dataset = owner.upload_dataset(_write_csv(tmp_path / f"{name}.csv", _rows(40, 2)), _schema())
        officer = Client(running.address, officer_token)
        officer.set_budget(dataset.name, epsilon=10, delta=1e-5, reason="hospital total")
        officer.share_dataset(dataset.name, f"principals/{maker_id}", epsilon=4, delta=1e-5, reason="study")
        sites.append((dataset.name.removeprefix("datasets/"), officer))
        tokens.append(officer_token)
    operator = Client(running.address, operator_token)
    yield {"sites": sites, "officer_tokens": tokens, "maker_id": maker_id, "operator": operator, "app": running.app}
    for _, officer in sites:
        officer.close()
    operator.close()


def _code(call) -> grpc.StatusCode:
    with pytest.raises(CleanroomClientError) as err:
        call()
    assert "Traceback" not in str(err.value)
    return err.value.code


def test_each_hospital_decides_its_own_part_of_a_cohort_request(hospitals) -> None:
    app, (north_id, north), (south_id, south) = hospitals["app"], *hospitals["sites"]
    with app.db.read() as session:
        maker = principal_repo.get_principal(session, hospitals["maker_id"])
    group = app.approvals.submit_cohort(maker, SpendRequest(north_id, maker.id, "training", "jobs/c", Privacy.cost(1.0, 1e-7),
                                                            cohort=(south_id,)))
    north_row, south_row = (r.resource_name for r in group.rows)
    listed = list(north.pending_requests())
    assert [(r.name, r.group) for r in listed] == [(north_row, group.resource_name)]
    assert [(g.dataset, g.state) for g in listed[0].group_requests] == [(f"datasets/{north_id}", "pending")]  # its own part only
    assert {r.name for r in hospitals["operator"].pending_requests()} == {north_row, south_row}
    assert _code(lambda: north.approve(south_row, "not mine")) is grpc.StatusCode.NOT_FOUND
    assert _code(lambda: north.reject(south_row, "not mine")) is grpc.StatusCode.NOT_FOUND
    first = north.approve(north_row, "fine for north")
    assert first.state == "approved" and app.approvals.group_outcome(group.id) == (RequestState.PENDING, None)
    assert south.get_budgets(f"datasets/{south_id}").budgets[0].reserved.epsilon == 0  # nothing held yet
    second = south.approve(south_row, "fine for south")
    assert [(g.dataset, g.state) for g in second.group_requests] == [(f"datasets/{south_id}", "approved")]
    state, spend_id = app.approvals.group_outcome(group.id)
    assert state is RequestState.APPROVED and spend_id is not None
    for dataset_id, officer in hospitals["sites"]:
        assert {b.reserved.epsilon for b in officer.get_budgets(f"datasets/{dataset_id}").budgets} == {1.0}
    assert list(north.pending_requests()) == [] and list(south.pending_requests()) == []


def test_the_cli_shows_an_officer_its_part_of_a_cohort_and_says_what_a_decision_does(hospitals, running, capsys) -> None:
    from cleanroom.cli import main as cli

    app, (north_id, _), (south_id, _) = hospitals["app"], *hospitals["sites"]
    with app.db.read() as session:
        maker = principal_repo.get_principal(session, hospitals["maker_id"])
    group = app.approvals.submit_cohort(maker, SpendRequest(north_id, maker.id, "training", "jobs/d", Privacy.cost(1.0, 1e-7),
                                                            cohort=(south_id,)))
    north_row = group.rows[0].resource_name
    connection = ["--server", running.address, "--token", hospitals["officer_tokens"][0]]
    assert cli.main([*connection, "privacy", "pending"]) == 0
    listed = capsys.readouterr().out
    assert north_row in listed and f"your part of {group.resource_name}" in listed and group.rows[1].resource_name not in listed
    assert cli.main([*connection, "privacy", "reject", north_row, "--reason", "not this study"]) == 0
    assert f"the whole cohort request {group.resource_name} is rejected" in capsys.readouterr().out
    assert app.approvals.group_outcome(group.id)[0] is RequestState.REJECTED

