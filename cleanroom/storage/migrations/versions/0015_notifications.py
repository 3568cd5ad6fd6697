"""The notification outbox: officers' email and webhook messages, one per event and channel.

Every replica derives events (a pending request, a budget threshold crossed, an audit-chain break)
and inserts them under a unique (event_key, channel), so an event is queued once however many
replicas see it; whichever replica claims a row (a conditional update of claimed_by and
claim_expires_at) sends it, and a failed send waits until next_attempt_at.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

from cleanroom.storage.tables import UTCDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_outbox",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("event_key", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("facts_json", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(32), nullable=True),
        sa.Column("claim_expires_at", UTCDateTime(), nullable=True),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.String(300), nullable=False),
        sa.UniqueConstraint("event_key", "channel", name="uq_notification_outbox_event_channel"),
    )
    op.create_index("ix_notification_outbox_state", "notification_outbox", ["state"])


def downgrade() -> None:
    op.drop_index("ix_notification_outbox_state", table_name="notification_outbox")
    op.drop_table("notification_outbox")
