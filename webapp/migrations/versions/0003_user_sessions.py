"""Server-side sign-in sessions (webapp/sessions.py): one row per sign-in, revocable.

Sessions signed in before this revision carry no token and are signed out by it.

Revision ID: 0003_user_sessions
Revises: 0002_out_of_distribution
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_user_sessions"
down_revision = "0002_out_of_distribution"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("revoked_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_user_sessions_user_id", "user_sessions", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_user_sessions_user_id", table_name="user_sessions")
    op.drop_table("user_sessions")
