"""Two-officer approval and share states.

`approval_policies.approvals_required` and `privacy_requests.approvals_required` (the policy's value
when the request was submitted; 1 for every existing row, today's behaviour); `request_approvals`:
one row per officer who approved a request. `shares.state` (active, paused, withdrawn) with who set
it, when and why; every existing share stays active.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

from cleanroom.storage.tables import UTCDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approval_policies") as batch:
        batch.add_column(sa.Column("approvals_required", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("privacy_requests") as batch:
        batch.add_column(sa.Column("approvals_required", sa.Integer(), nullable=False, server_default="1"))
    op.create_table(
        "request_approvals",
        sa.Column("request_id", sa.String(32), sa.ForeignKey("privacy_requests.id"), primary_key=True),
        sa.Column("officer_id", sa.String(32), primary_key=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
    )
    with op.batch_alter_table("shares") as batch:
        batch.add_column(sa.Column("state", sa.String(16), nullable=False, server_default="active"))
        batch.add_column(sa.Column("state_reason", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("state_by", sa.String(32), nullable=False, server_default=""))
        batch.add_column(sa.Column("state_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shares") as batch:
        for column in ("state_at", "state_by", "state_reason", "state"):
            batch.drop_column(column)
    op.drop_table("request_approvals")
    with op.batch_alter_table("privacy_requests") as batch:
        batch.drop_column("approvals_required")
    with op.batch_alter_table("approval_policies") as batch:
        batch.drop_column("approvals_required")
