"""The hospital's view against a real console and server: a data owner sees its own datasets, their
intake reports and shares (another hospital's dataset is a 404), and pausing, resuming and
withdrawing a share through the console's forms changes what the manufacturer can do over the API."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cleanroom.domain.identity import Role
from cleanroom.domain.organisations import OrgKind
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.statistics.engine import Query
from tests.api.test_datasets_api import _rows, _schema, _write_csv
from tests.console.harness import ConsoleWorld, HttpSession
from tests.tools import needs


@dataclass
class Hospital:
    owner: HttpSession
    dataset: str      # "datasets/{id}"
    dataset_id: str


@dataclass
class Story:
    north: Hospital
    south: Hospital
    maker_id: str
    maker: Client
    officer: Client

    @property
    def share_path(self) -> str:
        return f"/hospital/datasets/{self.north.dataset_id}/shares/{self.maker_id}"


@pytest.fixture
def story(console: ConsoleWorld, tmp_path: Path) -> Iterator[Story]:
    """Two hospitals with a dataset each (owners in their own organisations); North's is shared
    with a manufacturer by North's officer, and small statistics are auto-approved."""
    running, principals = console.running, console.running.app.principals
    maker_id, maker_token = running.principal(Role.MANUFACTURER, "Acme devices")
    hospitals, officer_token = [], ""
    for name in ("North", "South"):
        org = principals.create_organisation(f"{name} hospital", OrgKind.HOSPITAL, actor="test")
        owner, owner_token = principals.create(f"{name} data team", Role.DATA_OWNER, actor="test", organisation_id=org.id)
        _, officer_token = principals.create(f"{name} officer", Role.PRIVACY_OFFICER, actor="test", organisation_id=org.id)
        with Client(running.address, owner_token) as client:
            dataset = client.upload_dataset(_write_csv(tmp_path / f"{name}.csv", _rows(40, 2)), _schema(), display_name=f"{name} cardiology")
        hospitals.append(Hospital(console.sign_in_as(owner.id), dataset.name, dataset.name.removeprefix("datasets/")))
        if name == "North":
            with Client(running.address, officer_token) as officer:
                officer.set_budget(dataset.name, epsilon=10, delta=1e-4, reason="hospital total")
                officer.share_dataset(dataset.name, f"principals/{maker_id}", epsilon=4, delta=1e-4, reason="arrhythmia study")
                officer.set_approval_policy(dataset.name, max_epsilon=2, auto_approve_epsilon=2, reason="small statistics")
            north_officer = officer_token
    maker, officer = Client(running.address, maker_token), Client(running.address, north_officer)
    yield Story(hospitals[0], hospitals[1], maker_id, maker, officer)
    maker.close()
    officer.close()


def _refusal(call: Callable[[], object]) -> CleanroomClientError:
    with pytest.raises(CleanroomClientError) as error:
        call()
    return error.value


def test_a_data_owner_sees_its_dataset_intake_and_shares_but_not_another_hospitals(story: Story) -> None:
    listing = story.north.owner.get("/hospital")
    assert listing.status == 200
    assert "North cardiology" in listing.body and "South cardiology" not in listing.body
    assert f'href="/hospital/datasets/{story.north.dataset_id}"' in listing.body and "Acme devices: active" in listing.body

    page = story.north.owner.get(f"/hospital/datasets/{story.north.dataset_id}")
    assert page.status == 200
    for seen in ("Intake report", "Dropped columns", "full_name", "dropped at intake", "pseudonymised (keyed HMAC-SHA256)",
                 "coarsened: ", "quasi identifier", "patient key", "Acme devices", "ε 4", "Pause share", "Withdraw share"):
        assert seen in page.body, seen

    for other in (f"/hospital/datasets/{story.south.dataset_id}", f"/hospital/datasets/{story.south.dataset_id}/shares/{story.maker_id}/withdraw",
                  "/hospital/datasets/no-such-dataset"):
        assert story.north.owner.get(other).status == 404, other
    forged = story.north.owner.post(f"/hospital/datasets/{story.south.dataset_id}/shares/{story.maker_id}/state",
                                    {"state": "paused", "reason": "not ours"}, csrf_from="/hospital")
    assert forged.status == 404  # another hospital's share: absent, and untouched


@needs("bwrap")  # the manufacturer's statistics run in the server's sandboxed worker
def test_pausing_a_share_stops_the_manufacturers_next_reservation_and_resuming_restores_it(story: Story) -> None:
    query = Query(kind="count", epsilon=0.2)
    story.maker.run_query(story.north.dataset, query)
    share = next(b for b in story.officer.get_budgets(story.north.dataset).budgets if b.manufacturer)
    used = share.spent.epsilon + share.reserved.epsilon
    assert used > 0
    page = story.north.owner.get(f"/hospital/datasets/{story.north.dataset_id}").body
    assert f"ε {share.spent.epsilon:.4g}" in page and f"ε {share.reserved.epsilon:.4g}" in page

    paused = story.north.owner.post(f"{story.share_path}/state", {"state": "paused", "reason": "ethics review"},
                                    csrf_from="/hospital")
    assert paused.status == 303 and "notice=" in paused.location
    shown = story.north.owner.follow(paused).body
    assert "paused" in shown and "reason: ethics review" in shown and "Resume share" in shown
    refused = _refusal(lambda: story.maker.run_query(story.north.dataset, query))
    assert refused.code is grpc.StatusCode.FAILED_PRECONDITION and "paused" in refused.message

    resumed = story.north.owner.post(f"{story.share_path}/state", {"state": "active", "reason": "review done"},
                                     csrf_from="/hospital")
    assert resumed.status == 303
    story.maker.run_query(story.north.dataset, query)


def test_withdrawing_asks_for_confirmation_then_hides_the_dataset_from_the_manufacturer(story: Story) -> None:
    assert story.north.dataset in {d.name for d in story.maker.list_datasets()}
    form = story.north.owner.get(f"{story.share_path}/withdraw")
    assert form.status == 200 and "cannot be undone" in form.body
    unconfirmed = story.north.owner.post(f"{story.share_path}/withdraw", {"reason": "consent withdrawn"})
    assert unconfirmed.status == 303 and "error=" in unconfirmed.location
    assert story.north.dataset in {d.name for d in story.maker.list_datasets()}  # nothing happened without the tick

    done = story.north.owner.post(f"{story.share_path}/withdraw", {"reason": "consent withdrawn", "confirm": "withdraw"})
    assert done.status == 303 and "notice=" in done.location
    assert "Withdrawn for good" in story.north.owner.follow(done).body
    assert story.north.dataset not in {d.name for d in story.maker.list_datasets()}
    again = story.north.owner.post(f"{story.share_path}/state", {"state": "active", "reason": "undo"}, csrf_from="/hospital")
    assert again.status == 303 and "error=" in again.location  # final: the API's refusal, in its words
    assert story.north.dataset not in {d.name for d in story.maker.list_datasets()}


def test_other_roles_get_no_hospital_view(console: ConsoleWorld, story: Story) -> None:
    for role in (Role.PRIVACY_OFFICER, Role.AUDITOR):  # the API lists them governed schemas, without an owner
        listing = console.signed_in(role).get("/hospital")
        assert listing.status == 200 and "North cardiology" not in listing.body, role
    maker = console.sign_in_as(story.maker_id)  # the API lists it the shared dataset, schema only, without its owner
    listing = maker.get("/hospital")
    assert listing.status == 200 and "North cardiology" not in listing.body
    assert maker.get(f"/hospital/datasets/{story.north.dataset_id}").status == 404
    assert maker.get(f"{story.share_path}/withdraw").status == 404
    refused = maker.post(f"{story.share_path}/state", {"state": "paused", "reason": "mine?"}, csrf_from="/hospital")
    assert refused.status == 403  # SetShareState is not a manufacturer's
