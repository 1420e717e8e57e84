"""AgentWebSocketBridge: the one bridge from runs to the subscribers (sockets, streams) of the run's user."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Protocol

from loguru import logger

from adapters.event_bus import Envelope, EventBus
from adapters.follow import Position, ReadStored
from domain.errors import StorageUnavailable
from domain.events import AgentEvent
from domain.ports import EventLog


class Subscriber(Protocol):
    """A socket or an event stream of one user on this process."""

    user_id: str
    connection_id: str

    def deliver(self, envelope: Envelope) -> bool: ...

    @property
    def high_cursor(self) -> str | None:
        """The newest event it has (None: none yet, or it needs no cursor to catch up)."""
        ...

    async def catch_up(self, read: ReadStored) -> None:
        """The bus was away: `read` gives the user's stored events since it stood at the loss."""
        ...


def envelope_of(event: AgentEvent) -> Envelope:
    if event.cursor is None:
        raise ValueError("only stored events (with a cursor) are delivered")
    return Envelope(user_id=event.user_id, run_id=event.run_id, seq=event.seq, cursor=event.cursor,
                    type=event.type.value, terminal=event.type.is_terminal,
                    frame=json.dumps(event.to_wire(), separators=(",", ":"), default=str))


class AgentWebSocketBridge:
    """Knows which subscribers of this process belong to which user; stores, then fans out, each event."""

    def __init__(self, *, event_log: EventLog, bus: EventBus) -> None:
        self._log = event_log
        self._bus = bus
        self._subscribers: defaultdict[str, dict[str, Subscriber]] = defaultdict(dict)
        self._started = False
        self._lost_at: dict[str, str | None] = {}
        self._last_cursor: str | None = None  # the newest event this process has seen
        self._bus_down = False
        self.events_published = 0
        self.frames_delivered = 0
        self.frames_dropped = 0

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> None:
        await self._bus.start(self)
        self._log.listen(self._fan_out)
        self._started = True

    async def stop(self) -> None:
        self._started = False
        await self._bus.stop()

    # -- subscribers ----------------------------------------------------------------------------

    def register(self, subscriber: Subscriber) -> None:
        self._subscribers[subscriber.user_id][subscriber.connection_id] = subscriber
        if self._bus_down:
            # Opened while the bus is away: catch it up too, from the newest event seen here.
            self._lost_at.setdefault(subscriber.connection_id, self._last_cursor)

    def unregister(self, subscriber: Subscriber) -> None:
        mine = self._subscribers.get(subscriber.user_id)
        if mine is None:
            return
        mine.pop(subscriber.connection_id, None)
        if not mine:
            del self._subscribers[subscriber.user_id]

    def connections(self) -> list[Subscriber]:
        return [s for by_id in self._subscribers.values() for s in by_id.values()]

    def connections_of(self, user_id: str) -> list[Subscriber]:
        return list(self._subscribers.get(user_id, {}).values())

    # -- events ---------------------------------------------------------------------------------

    def publish(self, event: AgentEvent) -> asyncio.Future[AgentEvent]:
        """Queue the event for the log; once stored it is fanned out, then the future resolves.

        The log stores events in the order they were queued and hands each committed batch to
        `_fan_out` before their publishers hear of it, so subscribers get every run's events in
        order, only once they are stored, and a cancel of the publisher cannot come in between.
        """
        return self._log.submit(event)

    async def _fan_out(self, stored: list[AgentEvent]) -> None:
        self.events_published += len(stored)
        await self._bus.publish([envelope_of(event) for event in stored])

    # -- the bus as a listener sees it ------------------------------------------------------------

    def bus_lost(self) -> None:
        """Remember where each subscriber stood: what other processes publish now will not arrive."""
        self._bus_down = True
        for subscriber in self.connections():
            self._lost_at.setdefault(subscriber.connection_id, subscriber.high_cursor or self._last_cursor)

    async def bus_restored(self) -> None:
        """Catch every subscriber up from the log, from where it stood when the bus went away."""
        self._bus_down = False
        lost_at, self._lost_at = self._lost_at, {}
        for subscriber in self.connections():
            if subscriber.connection_id not in lost_at:
                continue
            try:
                await subscriber.catch_up(self._reader(subscriber.user_id, lost_at[subscriber.connection_id]))
            except StorageUnavailable:
                logger.warning("could not catch {} up after the bus returned: the database is away",
                               subscriber.connection_id)
            except Exception:
                logger.exception("could not catch {} up after the bus returned", subscriber.connection_id)

    def _reader(self, user_id: str, since: str | None) -> ReadStored:
        async def read(_: Position) -> list[Envelope]:
            return [envelope_of(event) for event in await self._log.read_user(user_id, since)]
        return read

    def deliver(self, envelope: Envelope) -> None:
        if self._last_cursor is None or envelope.cursor > self._last_cursor:
            self._last_cursor = envelope.cursor
        for subscriber in list(self._subscribers.get(envelope.user_id, {}).values()):
            if subscriber.deliver(envelope):
                self.frames_delivered += 1
            else:
                self.frames_dropped += 1
