"""Declared label classes (ColumnSpec.label_classes) in each dataset's stored columns.

A dataset's columns are one JSON document (datasets.columns_json), one object per column, so the
new per-column attribute lives there rather than in a table column of its own: this migration
writes `"label_classes": 0` (not declared) into every column of the datasets already stored, so
that every stored column carries the key. Reading tolerates its absence as well.

Revision ID: 0005
Revises: 0004
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_datasets = sa.table("datasets", sa.column("id", sa.String), sa.column("columns_json", sa.Text))


def _rewrite(change) -> None:
    bind = op.get_bind()
    for dataset_id, text in bind.execute(sa.select(_datasets.c.id, _datasets.c.columns_json)).all():
        columns = json.loads(text)
        for column in columns:
            change(column)
        bind.execute(_datasets.update().where(_datasets.c.id == dataset_id).values(columns_json=json.dumps(columns)))


def upgrade() -> None:
    _rewrite(lambda column: column.setdefault("label_classes", 0))


def downgrade() -> None:
    _rewrite(lambda column: column.pop("label_classes", None))
