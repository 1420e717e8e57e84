"""Run leases (owner, lease_expires_at) and event retention (event_log_state, indexes).

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = 64
NAME = 255
UNFINISHED = ("queued", "running")


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("owner", sa.String(NAME), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_runs_status_lease_expires_at", "runs", ["status", "lease_expires_at"])

    # Runs left unfinished by a server older than leases have no owner to finish them: give
    # them a lease that has lapsed already, so the first orphan sweep fails them.
    runs = sa.table(
        "runs",
        sa.column("status", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("lease_expires_at", sa.DateTime(timezone=True)),
    )
    op.execute(
        runs.update()
        .where(runs.c.status.in_(UNFINISHED))
        .values(lease_expires_at=runs.c.created_at)
    )

    op.create_table(
        "event_log_state",
        sa.Column("name", sa.String(ID), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_events_ts", "events", ["ts"])
    op.create_index("ix_events_thread_id", "events", ["thread_id"])


def downgrade() -> None:
    op.drop_index("ix_events_thread_id", table_name="events")
    op.drop_index("ix_events_ts", table_name="events")
    op.drop_table("event_log_state")
    op.drop_index("ix_runs_status_lease_expires_at", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("owner")
