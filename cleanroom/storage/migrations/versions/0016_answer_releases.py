"""Released statistics answers, kept for their release pages: the signed answer and receipt as
returned to the manufacturer, what the answer spent, and the audit entries it produced.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

from cleanroom.storage.tables import UTCDateTime

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "answer_releases",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("manufacturer_id", sa.String(32), nullable=False, index=True),
        sa.Column("dataset_id", sa.String(32), nullable=False, index=True),
        sa.Column("datasets_json", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("spend_id", sa.String(32), nullable=False),
        sa.Column("epsilon", sa.BigInteger(), nullable=False),
        sa.Column("delta", sa.BigInteger(), nullable=False),
        sa.Column("answer_json", sa.LargeBinary(), nullable=False),
        sa.Column("receipt", sa.LargeBinary(), nullable=False),
        sa.Column("audit_seqs_json", sa.Text(), nullable=False),
        sa.Column("released_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("answer_releases")
