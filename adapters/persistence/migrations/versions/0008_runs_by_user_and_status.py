"""An index of runs by user and status.

A message counts its user's unfinished runs (runs.max_pending_runs_per_user); the only index on
user_id was the unique one with client_message_id, so the count read every run the user ever
had. The same index serves a user's waiting runs.

On PostgreSQL a plain CREATE INDEX blocks writes to `runs` while it builds: on a large table,
upgrade in a quiet moment, or first create it by hand with `CREATE INDEX CONCURRENTLY
ix_runs_user_id_status ON runs (user_id, status)`, which this migration then leaves as it is.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_user_id_status", "runs", ["user_id", "status"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_runs_user_id_status", table_name="runs")
