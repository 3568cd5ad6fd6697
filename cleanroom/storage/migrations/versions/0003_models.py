"""Model versions, the key broker's used nonces, and the workload a reservation pays for.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from cleanroom.storage.tables import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner_id", sa.String(32), sa.ForeignKey("principals.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("package_sha256", sa.String(64), nullable=False),
        sa.Column("task", sa.String(40), nullable=False),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("input_shape_json", sa.Text(), nullable=False),
        sa.Column("trainable_json", sa.Text(), nullable=False),
        sa.Column("report_json", sa.Text(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_models_owner_id", "models", ["owner_id"])
    op.create_table(
        "used_nonces",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("used_at", UTCDateTime(), nullable=False),
    )
    with op.batch_alter_table("spends") as batch:
        batch.add_column(sa.Column("workload", sa.String(64), nullable=True))
        batch.create_index("ix_spends_workload", ["workload"])


def downgrade() -> None:
    with op.batch_alter_table("spends") as batch:
        batch.drop_index("ix_spends_workload")
        batch.drop_column("workload")
    op.drop_table("used_nonces")
    op.drop_table("models")
