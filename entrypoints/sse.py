"""GET /api/runs/{run_id}/events: one run's events as Server-Sent Events, honouring Last-Event-ID."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from adapters.bridge import envelope_of
from adapters.event_bus import Envelope
from entrypoints.appkeys import SETTINGS, USER, Services, services
from entrypoints.errors import ApiError
from entrypoints.run_stream import RunEventStream


def _last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID", "0").strip() or "0"
    if not raw.isdigit() or len(raw) > 9:
        raise ApiError("invalid_message", "Last-Event-ID must be the seq of an event of this run.")
    return int(raw)


def _sse(envelope: Envelope) -> bytes:
    return f"id: {envelope.seq}\nevent: {envelope.type}\ndata: {envelope.frame}\n\n".encode()


async def run_events(request: web.Request) -> web.StreamResponse:
    found = services(request.app)
    user_id, run_id = request[USER].id, request.match_info["run_id"]
    after = _last_event_id(request)
    server = request.app[SETTINGS].server
    stream = RunEventStream(user_id, server.ws_send_queue, run_id=run_id, prefix="sse")
    found.bridge.register(stream)  # before reading the log, so nothing falls between the two
    try:
        stored = await found.conversations.run_events(user_id, run_id, after)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        # A client that goes away ends its stream; the run goes on without it.
        with contextlib.suppress(ConnectionResetError):
            await _follow(response, stream, map(envelope_of, stored), after, server.sse_keepalive_s,
                          ended=lambda: _has_ended(found, user_id, run_id))
        return response
    finally:
        found.bridge.unregister(stream)


async def _has_ended(found: Services, user_id: str, run_id: str) -> bool:
    return any(e.type.is_terminal for e in await found.conversations.run_events(user_id, run_id))


async def _follow(response: web.StreamResponse, stream: RunEventStream, stored: Iterable[Envelope],
                  after: int, keepalive_s: float, ended: Callable[[], Awaitable[bool]]) -> None:
    """Stored events after `after`, then live ones, until the terminal event."""
    last = after
    for envelope in stored:
        await response.write(_sse(envelope))
        last = envelope.seq
        if envelope.terminal:
            return
    if after and await ended():
        return  # the client had everything already, the terminal event included
    while not stream.overflowed:
        try:
            async with asyncio.timeout(keepalive_s):
                envelope = await stream.queue.get()
        except TimeoutError:
            await response.write(b": keepalive\n\n")
            continue
        if envelope.seq > last:
            await response.write(_sse(envelope))
            last = envelope.seq
        if envelope.terminal:
            return
