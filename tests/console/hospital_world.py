"""Two hospitals for the inbox and budgets tests: North (a data owner, two officers, a dataset shared
with a manufacturer) and South (one officer), made directly on the real server's app; statistics
queries above North's auto-approve line make real pending requests through the real API."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import unescape
from pathlib import Path

import grpc
import pytest

from cleanroom.domain.identity import Role
from cleanroom.domain.organisations import OrgKind
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.statistics.engine import Query
from tests.api.test_datasets_api import _rows, _schema, _write_csv


@dataclass
class Hospitals:
    running: object
    dataset: str            # "datasets/{id}" (North's)
    maker_id: str
    north_officers: tuple[str, str]  # principal ids
    south_officer: str
    owner: str
    officer: Client         # North's first officer, over the API
    maker: Client
    south_org: str
    south_officer_token: str

    @property
    def dataset_id(self) -> str:
        return self.dataset.removeprefix("datasets/")

    def pending_query(self, epsilon: float = 3.0) -> str:
        """A real statistics query above the auto-approve line: the API answers with its pending request."""
        with pytest.raises(CleanroomClientError) as waiting:
            self.maker.run_query(self.dataset, Query(kind="count", epsilon=epsilon))
        assert waiting.value.code is grpc.StatusCode.FAILED_PRECONDITION
        return next(v.description for v in waiting.value.violations if v.field == "privacy_request")

    def close(self) -> None:
        self.officer.close()
        self.maker.close()


def build(running, tmp_path: Path) -> Hospitals:
    principals = running.app.principals
    north = principals.create_organisation("North hospital", OrgKind.HOSPITAL, actor="test")
    south = principals.create_organisation("South hospital", OrgKind.HOSPITAL, actor="test")
    owner, owner_token = principals.create("North owner", Role.DATA_OWNER, actor="test", organisation_id=north.id)
    first, first_token = principals.create("North officer one", Role.PRIVACY_OFFICER, actor="test", organisation_id=north.id)
    second, _ = principals.create("North officer two", Role.PRIVACY_OFFICER, actor="test", organisation_id=north.id)
    stranger, stranger_token = principals.create("South officer", Role.PRIVACY_OFFICER, actor="test", organisation_id=south.id)
    maker_id, maker_token = running.principal(Role.MANUFACTURER, "Acme Devices")
    with Client(running.address, owner_token) as hospital:
        dataset = hospital.upload_dataset(_write_csv(tmp_path / "north.csv", _rows(40, 2)), _schema())
    officer = Client(running.address, first_token)
    officer.set_budget(dataset.name, epsilon=10, delta=1e-5, reason="hospital total")
    officer.share_dataset(dataset.name, f"principals/{maker_id}", epsilon=8, delta=1e-5, reason="pilot study")
    officer.set_approval_policy(dataset.name, max_epsilon=5, auto_approve_epsilon=1, reason="routine counts only")
    return Hospitals(running, dataset.name, maker_id, (first.id, second.id), stranger.id, owner.id, officer,
                     Client(running.address, maker_token), south.id, stranger_token)


def page_text(html: str) -> str:
    """A page's words, tags removed and spaces collapsed."""
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))
