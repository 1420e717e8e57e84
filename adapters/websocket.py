"""SocketConnection: one client WebSocket, written by one task from a bounded queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from loguru import logger

from adapters.event_bus import Envelope

CLOSE_TOO_SLOW = 4408
REPLAY_PATIENCE_S = 10.0


class SocketConnection:
    """Frames wait in a bounded queue; a client too slow to drain it is closed with 4408.

    During a resume, live events are held back while the stored ones are sent, then released
    without the ones the replay already carried: no event twice, none lost.
    """

    def __init__(self, ws: web.WebSocketResponse, *, user_id: str, connection_id: str,
                 max_queue: int) -> None:
        self.ws = ws
        self.user_id = user_id
        self.connection_id = connection_id
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(max_queue)
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._held: list[Envelope] | None = None
        self._cursor_floor: str | None = None
        self._run_floor: dict[str, int] = {}
        self.sent = 0
        self.dropped = 0

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name=f"ws-writer:{self.connection_id}")

    # -- frames -------------------------------------------------------------------------------

    def send(self, frame: str) -> bool:
        """Queue a frame without waiting; False when the socket is closing or over its limit."""
        if self._closing:
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._too_slow()
            return False
        return True

    def send_json(self, payload: dict[str, Any]) -> bool:
        return self.send(json.dumps(payload, separators=(",", ":")))

    def deliver(self, envelope: Envelope) -> bool:
        """A live event from the bridge."""
        if self._held is not None:
            if len(self._held) >= self._queue.maxsize:
                self._too_slow()
                return False
            self._held.append(envelope)
            return True
        if self._already_sent(envelope):
            return True
        return self.send(envelope.frame)

    def _already_sent(self, envelope: Envelope) -> bool:
        if self._cursor_floor is not None and envelope.cursor <= self._cursor_floor:
            return True
        floor = self._run_floor.get(envelope.run_id)
        if floor is None:
            return False
        if envelope.terminal and envelope.seq > floor:
            del self._run_floor[envelope.run_id]
        return envelope.seq <= floor

    # -- resume -------------------------------------------------------------------------------

    def hold_live_events(self) -> None:
        self._held = []

    async def replay(self, stored: Iterable[Envelope], *, by_cursor: str | None = None,
                     run_id: str | None = None, after_seq: int = 0) -> None:
        """Send stored events (waiting for room, not dropping), then the live ones held meanwhile."""
        last_cursor, last_seq = by_cursor, after_seq
        for envelope in stored:
            if self._closing:
                return
            try:
                async with asyncio.timeout(REPLAY_PATIENCE_S):
                    await self._queue.put(envelope.frame)
            except TimeoutError:
                self._too_slow()
                return
            last_cursor, last_seq = envelope.cursor, envelope.seq
        if by_cursor is not None and last_cursor is not None:
            self._cursor_floor = max(self._cursor_floor or "", last_cursor)
        if run_id is not None:
            self._run_floor[run_id] = max(self._run_floor.get(run_id, 0), last_seq)
        self.release_live_events()

    def release_live_events(self) -> None:
        held, self._held = self._held or [], None
        for envelope in held:
            self.deliver(envelope)

    # -- closing ------------------------------------------------------------------------------

    def _too_slow(self) -> None:
        self.dropped += 1
        if not self._closing:
            logger.warning("socket {} fell {} frames behind; closing it with 4408",
                           self.connection_id, self._queue.maxsize)
            self._begin_close(CLOSE_TOO_SLOW, "too slow: reconnect and resume")

    def _begin_close(self, code: int, message: str) -> None:
        self._closing = True
        asyncio.get_running_loop().create_task(self._close_now(code, message))

    async def _close_now(self, code: int, message: str) -> None:
        if self._writer is not None:
            self._writer.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=message.encode())

    async def _write(self) -> None:
        while True:
            frame = await self._queue.get()
            if frame is None:
                return
            try:
                await self.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                self._closing = True
                return
            self.sent += 1

    async def close(self, code: int = 1000, message: str = "") -> None:
        """Send what is queued (briefly), then close with the given code."""
        if self._writer is not None and not self._closing:
            self._closing = True
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._writer), 2)
        self._closing = True
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=message.encode())
