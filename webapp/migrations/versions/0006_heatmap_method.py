"""Predictions record which class activation map their heatmap is (``heatmap_method``).

The value is the model card's ``heatmap.method`` (``gradcam``, ``gradcam++`` or
``layercam``; ``components.features.HEATMAP_METHOD_NAMES``), so a result page names
the map the model served rather than a fixed "Grad-CAM". It is nullable: rows without
a heatmap, rows graded by models whose card does not say, and rows graded before this
revision hold NULL (shown as "Heatmap").

Revision ID: 0006_heatmap_method
Revises: 0005_ood_reason
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_heatmap_method"
down_revision = "0005_ood_reason"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("heatmap_method", sa.String(16), nullable=True))


def downgrade() -> None:
    # Batch mode: SQLite can only drop columns by rebuilding the table.
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("heatmap_method")
