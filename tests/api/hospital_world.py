"""Hospitals as organisations over a real server: each with a data owner, two privacy officers and
an auditor, one uploaded dataset with a dataset-wide cap, shared with one manufacturer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cleanroom.domain.identity import Role
from cleanroom.domain.organisations import OrgKind
from cleanroom.sdk import Client
from tests.api.test_datasets_api import _rows, _schema, _write_csv


@dataclass
class Hospital:
    dataset: str                     # "datasets/{id}"
    owner: Client
    officers: list[Client]           # two, so that a second officer can approve
    auditor: Client
    officer_ids: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)  # "owner", "officer 1", "officer 2", "auditor"

    @property
    def dataset_id(self) -> str:
        return self.dataset.removeprefix("datasets/")

    def close(self) -> None:
        for client in (self.owner, *self.officers, self.auditor):
            client.close()


def make_hospital(running, tmp_path: Path, name: str, maker_id: str, *, share_epsilon: float = 4) -> Hospital:
    principals = running.app.principals
    org = principals.create_organisation(f"{name} hospital", OrgKind.HOSPITAL, actor="test")

    tokens: dict[str, str] = {}

    def client(role: Role, who: str) -> tuple[str, Client]:
        principal, token = principals.create(f"{name} {who}", role, actor="test", organisation_id=org.id)
        tokens[who] = token
        return principal.id, Client(running.address, token)

    _, owner = client(Role.DATA_OWNER, "owner")
    officers = [client(Role.PRIVACY_OFFICER, f"officer {i}") for i in (1, 2)]
    _, auditor = client(Role.AUDITOR, "auditor")
    dataset = owner.upload_dataset(_write_csv(tmp_path / f"{name}.csv", _rows(40, 2)), _schema())
    first = officers[0][1]
    first.set_budget(dataset.name, epsilon=10, delta=1e-5, reason="hospital total")
    first.share_dataset(dataset.name, f"principals/{maker_id}", epsilon=share_epsilon, delta=1e-5, reason="study")
    return Hospital(dataset.name, owner, [c for _, c in officers], auditor, [i for i, _ in officers], tokens)
