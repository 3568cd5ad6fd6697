"""Storage identity: which database this is, and which blob store it belongs to.

One row at most (id = 1, so two replicas pairing a fresh deployment at once cannot both insert).
`database_id` names this database; `blob_store_id` names the blob store (the marker file in the
blob directory records the same two identities). The migration creates the table empty: the
server fills it at start-up, when it can see the blob store (cleanroom/storage/identity.py), and
an existing deployment (database rows and blobs, no identities yet) adopts a pair there once.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from cleanroom.storage.tables import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_identity",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("database_id", sa.String(32), nullable=False),
        sa.Column("blob_store_id", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("storage_identity")
