"""Predictions record the model's out-of-distribution flag and score.

Both columns are nullable: rows graded before this revision, and rows graded by
models without the check, hold NULL ("not checked").

Revision ID: 0002_out_of_distribution
Revises: 0001_initial
Create Date: 2025-06-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_out_of_distribution"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("out_of_distribution", sa.Boolean, nullable=True))
        batch.add_column(sa.Column("ood_score", sa.Float, nullable=True))


def downgrade() -> None:
    # Batch mode: SQLite can only drop columns by rebuilding the table.
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("ood_score")
        batch.drop_column("out_of_distribution")
