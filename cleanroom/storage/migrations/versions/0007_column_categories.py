"""Declared column categories (ColumnSpec.categories) in each dataset's stored columns.

Like label_classes (0005), a per-column attribute inside datasets.columns_json: this migration
writes `"categories": []` (not declared) into every column of the datasets already stored, so that
every stored column carries the key. Reading tolerates its absence as well.

Revision ID: 0007
Revises: 0006
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
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
    _rewrite(lambda column: column.setdefault("categories", []))


def downgrade() -> None:
    _rewrite(lambda column: column.pop("categories", None))
