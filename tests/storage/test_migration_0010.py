"""Migration 0010 on a database that holds principals of every role and their datasets: each data
owner gets a hospital of its own, each manufacturer a manufacturer organisation of its own (named
after it), every officer, auditor and admin joins the operator, and each dataset takes its owner's
organisation. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from cleanroom.domain.identity import Role
from cleanroom.domain.organisations import OPERATOR_ID
from cleanroom.storage.db import Database, migrate

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PEOPLE = {  # id -> (display name, role)
    "own1": ("Seoul General data team", Role.DATA_OWNER),
    "own2": ("Busan Medical data team", Role.DATA_OWNER),
    "mak1": ("Acme Devices", Role.MANUFACTURER),
    "off1": ("Chief privacy officer", Role.PRIVACY_OFFICER),
    "aud1": ("External auditor", Role.AUDITOR),
    "adm1": ("First admin", Role.ADMIN),
}
DATASETS = {"ds1": "own1", "ds2": "own1", "ds3": "own2"}


def _rows_at_0009(engine: sa.Engine) -> None:
    """Rows written by the 0009 schema (reflected, so nothing of today's tables is assumed)."""
    meta = sa.MetaData()
    meta.reflect(engine, only=["principals", "datasets"])
    principals, datasets = meta.tables["principals"], meta.tables["datasets"]
    assert "organisation_id" not in principals.c and "organisation_id" not in datasets.c
    with engine.begin() as connection:
        connection.execute(principals.insert(), [
            {"id": pid, "display_name": name, "role": role.value, "token_hash": f"h-{pid}", "created_at": NOW}
            for pid, (name, role) in PEOPLE.items()])
        connection.execute(datasets.insert(), [
            {"id": did, "owner_id": owner, "display_name": did, "description": "", "columns_json": "[]", "k_anonymity": 5,
             "row_count": 10, "patient_count": 10, "report_json": "{}", "ciphertext_sha256": "0" * 64, "wrapped_key": b"k",
             "created_at": NOW, "deleted_at": NOW if did == "ds2" else None}
            for did, owner in DATASETS.items()])


def test_0010_gives_every_principal_and_dataset_an_organisation(database_url: str) -> None:
    db = Database(database_url)
    try:
        migrate(db.engine, to="0009")
        _rows_at_0009(db.engine)
        migrate(db.engine)
        with db.engine.connect() as connection:
            organisations = {row.id: (row.display_name, row.kind) for row in connection.execute(sa.text(
                "SELECT id, display_name, kind FROM organisations"))}
            member = {r[0]: r[1] for r in connection.execute(sa.text("SELECT id, organisation_id FROM principals"))}
            dataset_org = {r[0]: r[1] for r in connection.execute(sa.text("SELECT id, organisation_id FROM datasets"))}
    finally:
        db.dispose()
    for oversight in ("off1", "aud1", "adm1"):
        assert member[oversight] == OPERATOR_ID
    assert organisations[OPERATOR_ID][1] == "operator"
    for own, kind in (("own1", "hospital"), ("own2", "hospital"), ("mak1", "manufacturer")):
        assert member[own] not in (OPERATOR_ID, "")
        assert organisations[member[own]] == (PEOPLE[own][0], kind)
    assert len({member["own1"], member["own2"], member["mak1"]}) == 3  # one of its own each
    assert len(organisations) == 4
    assert dataset_org == {"ds1": member["own1"], "ds2": member["own1"], "ds3": member["own2"]}  # deleted ones too
