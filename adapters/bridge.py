"""AgentWebSocketBridge: the one bridge from runs to the sockets of the run's user."""

from __future__ import annotations

import json
from collections import defaultdict

from loguru import logger

from adapters.event_bus import EventBus
from adapters.websocket import SocketConnection
from domain.context import UserExecutionContext
from domain.events import AgentEvent, RunEventEmitter
from domain.ports import Clock, EventLog


class AgentWebSocketBridge:
    """Knows which sockets of this process belong to which user; stores, then fans out, each event."""

    def __init__(self, *, event_log: EventLog, bus: EventBus, clock: Clock) -> None:
        self._log = event_log
        self._bus = bus
        self._clock = clock
        self._sockets: defaultdict[str, dict[str, SocketConnection]] = defaultdict(dict)
        self._started = False
        self.events_published = 0
        self.frames_delivered = 0
        self.frames_dropped = 0

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> None:
        await self._bus.start(self._deliver)
        self._started = True

    async def stop(self) -> None:
        self._started = False
        await self._bus.stop()

    # -- sockets --------------------------------------------------------------------------------

    def register(self, connection: SocketConnection) -> None:
        self._sockets[connection.user_id][connection.connection_id] = connection

    def unregister(self, connection: SocketConnection) -> None:
        sockets = self._sockets.get(connection.user_id)
        if sockets is None:
            return
        sockets.pop(connection.connection_id, None)
        if not sockets:
            del self._sockets[connection.user_id]

    def connections(self) -> list[SocketConnection]:
        return [c for by_id in self._sockets.values() for c in by_id.values()]

    def connections_of(self, user_id: str) -> list[SocketConnection]:
        return list(self._sockets.get(user_id, {}).values())

    # -- events ---------------------------------------------------------------------------------

    def emitter_for(self, context: UserExecutionContext) -> RunEventEmitter:
        return RunEventEmitter(context, self._publish, self._clock)

    async def _publish(self, event: AgentEvent) -> AgentEvent:
        stored = await self._log.append(event)
        frame = json.dumps(stored.to_wire(), separators=(",", ":"), default=str)
        self.events_published += 1
        await self._bus.publish(stored.user_id, frame)
        return stored

    def _deliver(self, user_id: str, frame: str) -> None:
        for connection in list(self._sockets.get(user_id, {}).values()):
            if connection.send(frame):
                self.frames_delivered += 1
            else:
                self.frames_dropped += 1
                logger.debug("frame for user {} not delivered to {}", user_id, connection.connection_id)
