"""What one socket's writer has still to send: a deque and one wake-up, not an asyncio.Queue.

An empty asyncio.Queue is 3.3 KiB (three deques and an Event with a fourth), and an Event 0.9 KiB;
a server holds one of each per open socket, most of them idle (docs/performance.md, "memory per
idle socket"). A socket's queue has one consumer, its writer, and producers that never wait
(whether a frame fits is the socket's decision), so this is all it needs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FrameQueue(Generic[T]):
    """Items for one consumer; `put` never waits, `get` waits for an item."""

    __slots__ = ("_items", "_waiter", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self._items: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.maxsize = maxsize

    def qsize(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def put(self, item: T) -> None:
        """Add an item past `maxsize` too: the caller checked `full` if it cares."""
        self._items.append(item)
        wake(self._waiter)

    async def get(self) -> T:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def clear(self) -> None:
        self._items.clear()


class Signal:
    """Wakes whoever waits for something to change (room in a queue): an Event without its deque."""

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        """Until the next `notify` (one that came before this call does not count)."""
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)  # one waiter cancelled leaves the others waiting

    def notify(self) -> None:
        waiter, self._waiter = self._waiter, None
        wake(waiter)


def wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
