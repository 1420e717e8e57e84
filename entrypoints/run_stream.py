"""RunEventStream: the bridge subscriber behind both event streams (SSE run events and AG-UI)."""

from __future__ import annotations

import asyncio
import secrets

from adapters.event_bus import Envelope


class RunEventStream:
    """Keeps one run's events in a bounded queue; on overflow the caller reads the log instead.

    Registered before the run exists (AG-UI submits after subscribing), it keeps all of the
    user's events until it learns the run's id, then only that run's.
    """

    def __init__(self, user_id: str, max_queue: int, *, run_id: str | None = None,
                 prefix: str = "stream") -> None:
        self.user_id = user_id
        self.connection_id = f"{prefix}_{secrets.token_hex(8)}"
        self.run_id = run_id
        self.queue: asyncio.Queue[Envelope] = asyncio.Queue(max_queue)
        self.overflowed = False

    def deliver(self, envelope: Envelope) -> bool:
        if self.run_id is not None and envelope.run_id != self.run_id:
            return True
        try:
            self.queue.put_nowait(envelope)
        except asyncio.QueueFull:
            self.overflowed = True
            return False
        return True

    def restart(self) -> None:
        """After an overflow: drop what is queued; the caller reads the log from where it stood."""
        self.overflowed = False
        while not self.queue.empty():
            self.queue.get_nowait()
