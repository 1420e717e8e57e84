"""Approvals: runs.takeovers and runs.wait_expires_at, approval_grants, runs by thread.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

runs.takeovers counts takeovers apart from lease_epoch, which a claim of a waiting run raises
too; existing runs carry their epoch over (every raise so far was a takeover).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("takeovers", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("runs", sa.Column("wait_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE runs SET takeovers = lease_epoch")
    op.create_index("ix_runs_thread_id_created_at", "runs", ["thread_id", "created_at"])
    op.create_table(
        "approval_grants",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("tool", sa.String(255), nullable=False),
        sa.Column("thread_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("user_id", "tool", "thread_id", name="uq_approval_grants_user_id_tool_thread_id"),
    )


def downgrade() -> None:
    op.drop_table("approval_grants")
    op.drop_index("ix_runs_thread_id_created_at", table_name="runs")
    op.drop_column("runs", "wait_expires_at")
    op.drop_column("runs", "takeovers")
