"""Durable runs: run_checkpoints (a run's state after its last step), notes.key (idempotent saves).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

notes.key is a plain ALTER TABLE and a unique index (not a constraint: SQLite cannot add one to a
table that exists), as in 0003.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_checkpoints",
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id", name="fk_run_checkpoints_run_id",
                                                         ondelete="CASCADE"), primary_key=True),
        sa.Column("format", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column("notes", sa.Column("key", sa.String(255), nullable=True))
    op.create_index("uq_notes_user_id_key", "notes", ["user_id", "key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_notes_user_id_key", table_name="notes")
    op.drop_column("notes", "key")
    op.drop_table("run_checkpoints")
