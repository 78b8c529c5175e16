"""Predictions record the knee's side and an optional study reference.

``side`` is L or R, from the DICOM laterality attribute or chosen at upload
(``side_source``); ``side_chosen`` keeps the user's choice when the file's
attribute overrode it. ``study_reference`` is what the clinician typed to
identify the study; prior films are matched on it and the side. Rows graded
before this revision hold NULL in all four ("not recorded").

Revision ID: 0004_side_and_study_reference
Revises: 0003_user_sessions
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_side_and_study_reference"
down_revision = "0003_user_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("side", sa.String(1), nullable=True))
        batch.add_column(sa.Column("side_source", sa.String(8), nullable=True))
        batch.add_column(sa.Column("side_chosen", sa.String(1), nullable=True))
        batch.add_column(sa.Column("study_reference", sa.String(64), nullable=True))
        batch.create_index("ix_predictions_side", ["side"])
        batch.create_index("ix_predictions_study_reference", ["study_reference"])


def downgrade() -> None:
    # Batch mode: SQLite can only drop columns by rebuilding the table.
    with op.batch_alter_table("predictions") as batch:
        batch.drop_index("ix_predictions_study_reference")
        batch.drop_index("ix_predictions_side")
        batch.drop_column("study_reference")
        batch.drop_column("side_chosen")
        batch.drop_column("side_source")
        batch.drop_column("side")
