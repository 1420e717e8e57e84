"""SocketConnection: one client WebSocket, written by one task from a bounded queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web
from loguru import logger

CLOSE_TOO_SLOW = 4408


class SocketConnection:
    """Frames wait in a bounded queue; a client too slow to drain it is closed with 4408."""

    def __init__(self, ws: web.WebSocketResponse, *, user_id: str, connection_id: str,
                 max_queue: int) -> None:
        self.ws = ws
        self.user_id = user_id
        self.connection_id = connection_id
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(max_queue)
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.sent = 0
        self.dropped = 0

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name=f"ws-writer:{self.connection_id}")

    def send(self, frame: str) -> bool:
        """Queue a frame without waiting; False when the socket is closing or over its limit."""
        if self._closing:
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.dropped += 1
            logger.warning("socket {} fell {} frames behind; closing it with 4408",
                           self.connection_id, self._queue.maxsize)
            self._begin_close(CLOSE_TOO_SLOW, "too slow: reconnect and resume")
            return False
        return True

    def send_json(self, payload: dict[str, Any]) -> bool:
        return self.send(json.dumps(payload, separators=(",", ":")))

    def _begin_close(self, code: int, message: str) -> None:
        if self._closing:
            return
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
