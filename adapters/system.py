"""The real clock and id generator."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class RandomIds:
    """Unguessable ids: another user's id can't be derived from one's own."""

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{secrets.token_hex(10)}"
