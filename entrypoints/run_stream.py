"""RunEventStream: the bridge subscriber behind both event streams (SSE run events and AG-UI)."""

from __future__ import annotations

import secrets

from adapters.event_bus import Envelope
from adapters.follow import LiveQueue, ReadStored


class RunEventStream(LiveQueue):
    """One run's live events for `follow`, in a bounded queue; on overflow the follower reads the log.

    Registered before the run exists (AG-UI submits after subscribing), it keeps all of the
    user's events until it learns the run's id, then only that run's.
    """

    high_cursor: str | None = None  # a catch-up needs no cursor: the follower re-reads its own run

    def __init__(self, user_id: str, max_queue: int, *, run_id: str | None = None,
                 prefix: str = "stream") -> None:
        super().__init__(max_queue)
        self.user_id = user_id
        self.connection_id = f"{prefix}_{secrets.token_hex(8)}"
        self.run_id = run_id

    def deliver(self, envelope: Envelope) -> bool:
        if self.run_id is not None and envelope.run_id != self.run_id:
            return True
        return self.put(envelope)

    async def catch_up(self, read: ReadStored) -> None:
        """Events went by while the bus was away: the follower re-reads the log from where it stood."""
        self.overflowed = True
