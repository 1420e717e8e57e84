"""What one user's sockets may cost this process: the shared budget, and no closed socket kept alive."""

from __future__ import annotations

import contextlib
import socket

import aiohttp.web_ws
from aiohttp import web

from adapters.bridge import AgentWebSocketBridge
from adapters.budget import UserBudget
from adapters.websocket import SocketConnection
from container.settings import SecuritySettings


def user_budget(security: SecuritySettings) -> UserBudget:
    return UserBudget(bytes_per_s=security.ws_user_bytes_per_s, bytes_burst=security.ws_user_bytes_burst,
                      replay_per_s=security.ws_replay_events_per_s, replay_burst=security.ws_replay_burst)


def budget_of(bridge: AgentWebSocketBridge, user_id: str, security: SecuritySettings) -> UserBudget:
    """The user's budget, shared by all its sockets on this process (it lives while one is open)."""
    for connection in bridge.connections_of(user_id):
        if isinstance(connection, SocketConnection):
            return connection.budget
    return user_budget(security)


def disarm(ws: web.WebSocketResponse) -> None:
    """Drop aiohttp's heartbeat timer of a closed socket.

    The client's answer to our close frame re-arms it, and the timer holds the socket's objects
    for one heartbeat interval: a client refused one socket after another in a loop grew the
    server by ~12 KiB per attempt for that long (docs/performance.md, "Fair under abuse").
    """
    with contextlib.suppress(AttributeError):
        ws._cancel_heartbeat()  # aiohttp offers no public way


def small_send_buffer(request: web.Request, size: int) -> None:
    """A fixed, small kernel send buffer instead of one autotuned up to megabytes.

    Until the kernel's buffers are full, a client that reads nothing looks like one that does;
    with autotuning that took minutes at a chat's pace, and a socket that is never closed holds
    what the server queued for it.
    """
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def bound_received_frames(limit_bytes: int) -> None:
    """aiohttp stops reading a socket once its parsed, unhandled frames pass `limit_bytes`.

    aiohttp counts each frame as its size + 128 bytes and stops at twice its chunk size, 512 KiB:
    a client flooding 31-byte resumes had ~3,300 frames (~0.6 MiB of Python objects) parsed per
    socket before TCP pushed back, and once such a flood ended the process kept most of that
    memory (CPython's arenas stay while one live object is in them): +14% RSS after 20 sockets'
    resume flood, +3% with 16 KiB (docs/performance.md, "Fair under abuse"). aiohttp offers no
    public way: its reader queue takes the module's chunk size when a socket is upgraded, so this
    holds for every socket the process upgrades afterwards, whichever app upgrades it (the last
    app created sets it). aiohttp's client keeps its own constant: client sockets are unaffected.
    """
    aiohttp.web_ws.DEFAULT_CHUNK_SIZE = max(1, limit_bytes // 2)
