"""Organisations and cohorts.

- `organisations`: hospitals, manufacturers and the platform operator. Every principal gets an
  `organisation_id`; every dataset carries its owner's, so a hospital officer's queries filter on
  one column.
- Existing data migrates: each data owner gets a hospital organisation of its own and each
  manufacturer a manufacturer organisation of its own (named after the principal); every officer,
  auditor and admin joins the operator organisation (id "operator"), which acts platform-wide, so
  oversight keeps the reach it had before organisations existed.
- `spends.cohort_json`: a cohort spend's other datasets (charged the same amount together).
- `privacy_requests.group_id`: the rows of one cohort request, one per dataset.

Revision ID: 0010
Revises: 0009
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from cleanroom.storage.tables import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

OPERATOR_ID = "operator"  # cleanroom.domain.organisations.OPERATOR_ID, fixed here as of this revision
_OWN_ORGANISATION = {"data_owner": "hospital", "manufacturer": "manufacturer"}


def upgrade() -> None:
    organisations = op.create_table(
        "organisations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.add_column("principals", sa.Column("organisation_id", sa.String(32), nullable=False, server_default=""))
    op.create_index("ix_principals_organisation_id", "principals", ["organisation_id"])
    op.add_column("datasets", sa.Column("organisation_id", sa.String(32), nullable=False, server_default=""))
    op.create_index("ix_datasets_organisation_id", "datasets", ["organisation_id"])
    op.add_column("spends", sa.Column("cohort_json", sa.Text(), nullable=False, server_default="[]"))
    op.add_column("privacy_requests", sa.Column("group_id", sa.String(32), nullable=True))
    op.create_index("ix_privacy_requests_group_id", "privacy_requests", ["group_id"])
    _migrate_principals(organisations)


def _migrate_principals(organisations: sa.Table) -> None:
    bind = op.get_bind()
    now = datetime.now(UTC)
    principals = sa.table("principals", sa.column("id", sa.String), sa.column("display_name", sa.String),
                          sa.column("role", sa.String), sa.column("organisation_id", sa.String))
    datasets = sa.table("datasets", sa.column("owner_id", sa.String), sa.column("organisation_id", sa.String))
    rows = bind.execute(sa.select(principals.c.id, principals.c.display_name, principals.c.role)).all()
    operator_needed = any(role not in _OWN_ORGANISATION for _, _, role in rows)
    if operator_needed:
        bind.execute(organisations.insert().values(id=OPERATOR_ID, display_name="Platform operator", kind="operator", created_at=now))
    for principal_id, name, role in rows:
        kind = _OWN_ORGANISATION.get(role)
        organisation_id = OPERATOR_ID if kind is None else f"o-{principal_id}"[:32]
        if kind is not None:
            bind.execute(organisations.insert().values(id=organisation_id, display_name=name[:200], kind=kind, created_at=now))
        bind.execute(principals.update().where(principals.c.id == principal_id).values(organisation_id=organisation_id))
        bind.execute(datasets.update().where(datasets.c.owner_id == principal_id).values(organisation_id=organisation_id))


def downgrade() -> None:
    op.drop_index("ix_privacy_requests_group_id", table_name="privacy_requests")
    with op.batch_alter_table("privacy_requests") as batch:
        batch.drop_column("group_id")
    with op.batch_alter_table("spends") as batch:
        batch.drop_column("cohort_json")
    for table in ("datasets", "principals"):
        op.drop_index(f"ix_{table}_organisation_id", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("organisation_id")
    op.drop_table("organisations")
