"""GET /api/runs/{run_id}/events: one run's events as Server-Sent Events, honouring Last-Event-ID."""

from __future__ import annotations

import contextlib

from aiohttp import web

from adapters.bridge import envelope_of
from adapters.event_bus import Envelope
from adapters.follow import Position, follow
from entrypoints.appkeys import SETTINGS, USER, services
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

    async def stored(at: Position) -> list[Envelope]:
        return [envelope_of(e) for e in await found.conversations.run_events(user_id, run_id, at.seq(run_id))]

    async def ended() -> bool:
        return any(e.type.is_terminal for e in await found.conversations.run_events(user_id, run_id))

    stream = RunEventStream(user_id, server.ws_send_queue, run_id=run_id, prefix="sse")
    found.bridge.register(stream)  # before reading the log, so nothing falls between the two
    try:
        await found.conversations.run(user_id, run_id)  # another user's or no run: 404 before the stream
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        events = follow(stream, stored, Position({run_id: after}), run_id=run_id,
                        idle_s=server.sse_keepalive_s,
                        ended=ended if after else None)  # a client may have had the end already
        # A client that goes away ends its stream; the run goes on without it.
        with contextlib.suppress(ConnectionResetError):
            async with contextlib.aclosing(events):
                async for envelope in events:
                    await response.write(b": keepalive\n\n" if envelope is None else _sse(envelope))
        return response
    finally:
        found.bridge.unregister(stream)
