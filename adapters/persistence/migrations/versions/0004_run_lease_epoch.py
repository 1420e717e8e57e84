"""Run fencing: runs.lease_epoch, raised by every takeover; writes of an older epoch are refused.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

A plain ALTER TABLE with a constant default, on SQLite too (see 0003 for why not a batch copy).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Runs that exist now were written by their first owner: epoch 0, what that owner holds.
    op.add_column("runs", sa.Column("lease_epoch", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("runs", "lease_epoch")
