"""Credentials and the privacy-audit gate.

`tokens`: one row per issued bearer token (only its SHA-256 is kept), with an optional expiry and a
revocation time; every principal's existing token becomes a row that never expires, so no caller is
locked out by the upgrade. `approval_policies.require_privacy_audit`: an officer's demand that a
job's weights pass the one-run privacy audit before release.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

from cleanroom.storage.tables import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("principal_id", sa.String(32), sa.ForeignKey("principals.id"), nullable=False, index=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("created_by", sa.String(64), nullable=False, server_default=""),
    )
    op.execute("INSERT INTO tokens (id, principal_id, token_hash, created_at, created_by) "
               "SELECT 't' || substr(token_hash, 1, 16), id, token_hash, created_at, 'migration-0012' FROM principals")
    with op.batch_alter_table("approval_policies") as batch:
        batch.add_column(sa.Column("require_privacy_audit", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("approval_policies") as batch:
        batch.drop_column("require_privacy_audit")
    op.drop_table("tokens")
