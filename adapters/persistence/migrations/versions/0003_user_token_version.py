"""Token versions: users.token_version, bumped by logout and password change to revoke tokens.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03

Both steps are plain ALTER TABLEs, on SQLite too (ADD COLUMN with a constant default; DROP
COLUMN since SQLite 3.35): a batch copy of `users` would have to drop the table, which the
foreign keys of `threads` forbid while they are enforced.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing users start at 0, the version every token issued before this migration carries.
    op.add_column("users", sa.Column("token_version", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("users", "token_version")
