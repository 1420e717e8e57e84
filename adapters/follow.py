"""follow(): a run's (or a user's) stored events after a point, then its live ones, no gap, no repeat.

The one reader behind SSE, AG-UI and a socket's resume or catch-up. Its caller subscribes a
`LiveQueue` before the first read, so an event stored meanwhile is in the log, in the queue, or in
both; `Position` drops the second copy (per-run seq). The queue is bounded: past its limit it is
marked overflowed, and the reader re-reads the log from where it stood instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from adapters.event_bus import Envelope


class Position:
    """How far a follower got: the last seq it has of each run, and the newest cursor among them."""

    def __init__(self, seqs: dict[str, int] | None = None, cursor: str | None = None) -> None:
        self._seqs = dict(seqs or {})
        self.cursor = cursor

    def seq(self, run_id: str) -> int:
        return self._seqs.get(run_id, 0)

    def is_new(self, envelope: Envelope) -> bool:
        return envelope.seq > self.seq(envelope.run_id)

    def note(self, envelope: Envelope) -> None:
        self._seqs[envelope.run_id] = max(self.seq(envelope.run_id), envelope.seq)
        if self.cursor is None or envelope.cursor > self.cursor:
            self.cursor = envelope.cursor

    def copy(self) -> Position:
        return Position(self._seqs, self.cursor)


class LiveQueue:
    """Live envelopes waiting for their follower, at most `limit`; past it, the follower re-reads the log."""

    def __init__(self, limit: int) -> None:
        self._queue: asyncio.Queue[Envelope] = asyncio.Queue(limit)
        self.overflowed = False

    @property
    def limit(self) -> int:
        return self._queue.maxsize

    def put(self, envelope: Envelope) -> bool:
        try:
            self._queue.put_nowait(envelope)
        except asyncio.QueueFull:
            self.overflowed = True
            return False
        return True

    async def get(self) -> Envelope:
        return await self._queue.get()

    def empty(self) -> bool:
        return self._queue.empty()

    def drain(self) -> list[Envelope]:
        """Everything queued, oldest first; the queue is empty afterwards."""
        taken = []
        while not self._queue.empty():
            taken.append(self._queue.get_nowait())
        return taken

    def restart(self) -> None:
        """After an overflow: what is queued goes; the follower reads the log from where it stood."""
        self.overflowed = False
        self.drain()


ReadStored = Callable[[Position], Awaitable[Sequence[Envelope]]]
"""The stored events after a position, in order (one run's after its seq, or the user's after the cursor)."""

# A replay reads the log this many events at a time: a resume from far back neither holds the
# event loop for one long read (SQLite runs on it) nor holds a whole history in memory at once.
# 100: each page is read and encoded in one turn of the loop (~10 ms), which everyone else's runs
# wait behind (docs/performance.md, "Fair under abuse").
REPLAY_PAGE = 100


def paged(read: Callable[[Position, int], Awaitable[list[Envelope]]]) -> ReadStored:
    """A reader that reads one page after the position; `follow` reads again while pages come full."""

    async def read_page(position: Position) -> PagedRead:
        return PagedRead(await read(position, REPLAY_PAGE))

    return read_page


class PagedRead(list[Envelope]):
    """One page of a paged read: full means there may be more after it."""

    @property
    def full(self) -> bool:
        return len(self) >= REPLAY_PAGE


async def follow(live: LiveQueue, read: ReadStored, position: Position, *, run_id: str | None = None,
                 idle_s: float | None = None, caught_up_only: bool = False,
                 ended: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[Envelope | None]:
    """Yield the stored events after `position`, then live ones from `live`, noting each in `position`.

    - `run_id`: follow that run only: its terminal event ends the follow, and a live event past
      the next seq (one was lost on the way) is filled in from the log.
    - `idle_s`: nothing came for that long: re-read the log (live events are lost while a bus is
      down), then yield None, so the caller can send a keepalive or end the follow itself.
    - `caught_up_only`: end once the log and what the queue holds now are through (a replay).
    - `ended`: asked once if the log had no terminal event: True ends the follow (a client that
      asks from a point after the run's end).
    """
    pending = await read(position)
    first_read, idle = True, False
    while True:
        for envelope in pending:
            if (run_id is not None and envelope.run_id != run_id) or not position.is_new(envelope):
                continue
            position.note(envelope)
            yield envelope
            if run_id is not None and envelope.terminal:
                return
        if isinstance(pending, PagedRead) and pending.full:
            pending = await read(position)  # the next page, before anything live
            continue
        if first_read and ended is not None and await ended():
            return
        first_read = False
        if idle:
            yield None
            idle = False
        if live.overflowed:
            live.restart()  # from here on, what the re-read misses lands in the queue
            pending = await read(position)
            continue
        if caught_up_only and live.empty():
            return
        try:
            async with asyncio.timeout(idle_s):
                envelope = await live.get()
        except TimeoutError:
            pending, idle = await read(position), True
            continue
        if run_id is not None and envelope.run_id == run_id and envelope.seq > position.seq(run_id) + 1:
            pending = [*await read(position), envelope]
        else:
            pending = [envelope]
