"""The dataset policy's per-patient row bound for statistics queries.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approval_policies") as batch:
        batch.add_column(sa.Column("stats_rows_per_patient", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("approval_policies") as batch:
        batch.drop_column("stats_rows_per_patient")
