"""Shares, budgets, spends, the ledger, privacy requests, approval policies and the audit chain.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from cleanroom.storage.tables import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BIG = sa.BigInteger()


def _amounts(*names: str) -> list[sa.Column]:
    return [sa.Column(n, BIG, nullable=False) for n in names]


def upgrade() -> None:
    op.create_table(
        "shares",
        sa.Column("dataset_id", sa.String(32), sa.ForeignKey("datasets.id"), primary_key=True),
        sa.Column("manufacturer_id", sa.String(32), sa.ForeignKey("principals.id"), primary_key=True),
        sa.Column("created_by", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_shares_manufacturer_id", "shares", ["manufacturer_id"])
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("dataset_id", sa.String(32), sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("manufacturer_id", sa.String(32), nullable=True),
        *_amounts("cap_epsilon", "cap_delta", "reserved_epsilon", "reserved_delta", "spent_epsilon", "spent_delta"),
    )
    op.create_index("ix_budgets_dataset_id", "budgets", ["dataset_id"])
    op.create_table(
        "spends",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("dataset_id", sa.String(32), nullable=False),
        sa.Column("manufacturer_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("reference", sa.String(100), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        *_amounts("reserved_epsilon", "reserved_delta", "committed_epsilon", "committed_delta"),
        sa.Column("mechanism_json", sa.Text(), nullable=False),
        sa.Column("decrypted_at", UTCDateTime(), nullable=True),
        sa.Column("released_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_spends_dataset_id", "spends", ["dataset_id"])
    op.create_index("ix_spends_state", "spends", ["state"])
    op.create_table(
        "ledger_events",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("spend_id", sa.String(32), nullable=True),
        sa.Column("dataset_id", sa.String(32), nullable=False),
        sa.Column("manufacturer_id", sa.String(32), nullable=True),
        sa.Column("budget_ids", sa.Text(), nullable=False),
        *_amounts("epsilon", "delta"),
        sa.Column("actor_id", sa.String(32), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("mechanism_json", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_index("ix_ledger_events_spend_id", "ledger_events", ["spend_id"])
    op.create_index("ix_ledger_events_dataset_id", "ledger_events", ["dataset_id"])
    op.create_table(
        "privacy_requests",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("dataset_id", sa.String(32), nullable=False),
        sa.Column("manufacturer_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("reference", sa.String(100), nullable=False),
        *_amounts("cost_epsilon", "cost_delta"),
        sa.Column("mechanism_json", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("spend_id", sa.String(32), nullable=True),
        sa.Column("decided_by", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("decided_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_privacy_requests_dataset_id", "privacy_requests", ["dataset_id"])
    op.create_index("ix_privacy_requests_state", "privacy_requests", ["state"])
    op.create_table(
        "approval_policies",
        sa.Column("dataset_id", sa.String(32), sa.ForeignKey("datasets.id"), primary_key=True),
        *_amounts("max_epsilon", "max_delta", "auto_approve_epsilon"),
    )
    op.create_table(
        "audit_entries",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("details_json", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_entries_action", "audit_entries", ["action"])
    op.create_index("ix_audit_entries_target", "audit_entries", ["target"])
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.execute(sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '" + "0" * 64 + "')"))


def downgrade() -> None:
    for table in ("audit_head", "audit_entries", "approval_policies", "privacy_requests", "ledger_events", "spends", "budgets", "shares"):
        op.drop_table(table)
