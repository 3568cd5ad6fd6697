"""Server leases: which server process holds the work in flight.

`server_leases` has one row per running server process (its instance id), with a heartbeat the
server renews in the background; a row whose `expires_at` has passed belongs to a dead server.
Work in flight carries its owner's instance id: running jobs (`jobs.owner`), open reservations
(`spends.owner`) and request claims (`idempotency.owner`). Start-up and the periodic sweeper
recover only what belongs to an owner without a live lease (rows from before this migration have
no owner and count as a dead server's).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from cleanroom.storage.tables import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_OWNED = ("jobs", "spends", "idempotency")


def upgrade() -> None:
    op.create_table(
        "server_leases",
        sa.Column("instance_id", sa.String(32), primary_key=True),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    for table in _OWNED:
        op.add_column(table, sa.Column("owner", sa.String(32), nullable=True))
        op.create_index(f"ix_{table}_owner", table, ["owner"])


def downgrade() -> None:
    for table in _OWNED:
        op.drop_index(f"ix_{table}_owner", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("owner")
    op.drop_table("server_leases")
