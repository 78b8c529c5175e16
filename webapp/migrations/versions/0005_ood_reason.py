"""Predictions record why the model flagged the image (its ``ood_reason`` output).

``ood_reason`` holds the codes of the model's failed input checks joined by ","
(``components.features.OOD_REASONS``, e.g. ``inverted,unlike_training_films``).
It is nullable: rows graded before this revision, rows the model did not flag, and
rows graded by models exported without the reason output hold NULL.

Revision ID: 0005_ood_reason
Revises: 0004_side_and_study_reference
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_ood_reason"
down_revision = "0004_side_and_study_reference"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("ood_reason", sa.Text, nullable=True))


def downgrade() -> None:
    # Batch mode: SQLite can only drop columns by rebuilding the table.
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("ood_reason")
