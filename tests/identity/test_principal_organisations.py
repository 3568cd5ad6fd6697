"""PrincipalService's organisations against a real database: the operator organisation is made
once even when two servers create its first members at the same moment."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cleanroom.crypto import LocalKeyFileProvider
from cleanroom.domain.identity import Role
from cleanroom.domain.organisations import OPERATOR_ID
from cleanroom.identity.keyring import KeyService
from cleanroom.identity.principals import PrincipalService
from cleanroom.storage import organisation_repo
from cleanroom.storage.db import Database, migrate
from cleanroom.storage.tables import AuditEntryRow, OrganisationRow


@pytest.mark.postgres
def test_two_servers_making_the_operator_at_once_end_with_one(postgres_url: str, tmp_path: Path, monkeypatch) -> None:
    """Both transactions look before either inserts (a barrier holds them), so one insert loses the
    unique-key race; it must fall back to the winner's row, not fail the principal's creation."""
    migrate(Database(postgres_url).engine)
    servers = [PrincipalService(db, KeyService(db, LocalKeyFileProvider(tmp_path))) for db in (Database(postgres_url), Database(postgres_url))]
    for server in servers:
        server.token_for("warm-up")  # the token root exists before the race
    both_looked = threading.Barrier(2, timeout=10)
    looked_up = organisation_repo.get_organisation
    waited = threading.local()

    def get_after_both_looked(session, organisation_id):  # type: ignore[no-untyped-def]
        found = looked_up(session, organisation_id)
        if not getattr(waited, "done", False):
            waited.done = True
            both_looked.wait()
        return found

    monkeypatch.setattr(organisation_repo, "get_organisation", get_after_both_looked)
    made, errors = [], []

    def create(server: PrincipalService, role: Role) -> None:
        try:
            made.append(server.create(f"first {role.value}", role, actor="test")[0])
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=create, args=(s, r)) for s, r in zip(servers, (Role.PRIVACY_OFFICER, Role.AUDITOR), strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and {p.organisation_id for p in made} == {OPERATOR_ID}
    db = Database(postgres_url)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(OrganisationRow)) == 1
        made_by = session.scalars(select(AuditEntryRow.action).where(AuditEntryRow.target == f"organisations/{OPERATOR_ID}")).all()
        assert made_by == ["organisation.create"]  # audited once, by the server whose insert won
    db.dispose()
