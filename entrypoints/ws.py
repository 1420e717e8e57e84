"""GET /ws: authenticate, register with the bridge, read frames in one loop, always unregister."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime

from aiohttp import WSMsgType, web
from loguru import logger

from adapters.bridge import AgentWebSocketBridge
from adapters.budget import TokenBucket
from adapters.close_codes import CloseCode
from adapters.websocket import SocketConnection
from domain.errors import Unauthorized
from entrypoints.appkeys import LIFECYCLE, SETTINGS, services
from entrypoints.frames import FrameError, client_message_id_of, parse_auth
from entrypoints.middlewares import request_id_of
from entrypoints.ws_frames import FrameDispatcher, run_reader
from entrypoints.ws_limits import budget_of, disarm, small_send_buffer

# A new socket's live events wait this long at most for a first frame (usually a resume).
FIRST_FRAME_PATIENCE_S = 0.5


async def _handle_frame(dispatcher: FrameDispatcher, connection: SocketConnection, raw: str) -> None:
    """One frame: whatever goes wrong is answered with an error frame; the socket reads on."""
    try:
        await dispatcher.handle(raw)
    except Exception:
        logger.exception("a frame of socket {} failed", connection.connection_id)
        frame = {"type": "error", "code": "internal_error",
                 "message": "Something went wrong on the server handling that frame; it was logged."}
        if (client_message_id := client_message_id_of(raw)) is not None:
            frame["client_message_id"] = client_message_id
        connection.send_json(frame)


async def _token_from_first_frame(ws: web.WebSocketResponse, timeout_s: float) -> str | None:
    try:
        msg = await ws.receive(timeout=timeout_s)
    except TimeoutError:
        return None
    if msg.type is not WSMsgType.TEXT:
        return None
    try:
        return parse_auth(msg.data).token
    except FrameError:
        return None  # no token: closed with 4401 like a wrong one


async def websocket(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS].server
    ws = web.WebSocketResponse(heartbeat=settings.ws_heartbeat_s,
                               max_msg_size=settings.ws_max_frame_bytes)
    await ws.prepare(request)
    lifecycle = request.app[LIFECYCLE]
    if not lifecycle.ready or lifecycle.draining:
        await ws.close(code=CloseCode.TRY_AGAIN, message=b"server not ready: try again shortly")
        return ws
    found = services(request.app)
    security = request.app[SETTINGS].security
    if not origin_allowed(request, security.allowed_origins):
        await ws.close(code=CloseCode.POLICY, message=b"this origin may not open a socket here")
        return ws

    header = request.headers.get("Authorization", "")
    scheme, _, header_token = header.partition(" ")
    token = header_token.strip() if scheme.lower() == "bearer" else None
    if token is None:
        token = await _token_from_first_frame(ws, settings.ws_auth_timeout_s)
    try:
        session = await found.auth.session(token)
    except Unauthorized as exc:
        await ws.close(code=CloseCode.UNAUTHORIZED, message=exc.message.encode()[:120])
        return ws
    user = session.user
    if len(found.bridge.connections_of(user.id)) >= security.max_sockets_per_user:
        # Answered once the user's budget allows: a client that opens one more socket again and
        # again is slowed to its budget's pace instead of taking the server's time from others.
        budget = budget_of(found.bridge, user.id, security)
        budget.refused_socket()
        await asyncio.sleep(min(budget.wait_s(), settings.ws_auth_timeout_s))
        await ws.send_json({"type": "error", "code": "limit_exceeded",
                            "message": f"You have {security.max_sockets_per_user} sockets open; "
                                       "close one (another tab or device) first."})
        await ws.close(code=CloseCode.TRY_AGAIN, message=b"too many sockets for this user")
        disarm(ws)
        return ws

    small_send_buffer(request, settings.ws_kernel_send_buffer_bytes)
    connection = SocketConnection(ws, user_id=user.id, connection_id=f"conn_{secrets.token_hex(8)}",
                                  max_queue=settings.ws_send_queue,
                                  max_queue_bytes=settings.ws_send_queue_bytes,
                                  stall_s=settings.ws_send_stall_s,
                                  budget=budget_of(found.bridge, user.id, security),
                                  transport=request.transport,
                                  fill_gap=run_reader(found.conversations, user.id))
    connection.start()
    connection.send_json({"type": "ready", "user_id": user.id,
                          "connection_id": connection.connection_id})
    connection.hold_until_first_frame(FIRST_FRAME_PATIENCE_S)
    found.bridge.register(connection)
    expiry = _close_when_expired(connection, session.expires_at)
    dispatcher = FrameDispatcher(chat=found.chat, approvals=found.approvals,
                                 conversations=found.conversations, connection=connection,
                                 request_id=request_id_of(request))
    # Faster than its frame pace or its user's budget, a socket is read later (TCP pushes back on
    # the sender): a flood costs the server next to nothing, and costs only its own user.
    throttle = TokenBucket(security.ws_frames_per_s, security.ws_frame_burst)
    with logger.contextualize(user_id=user.id, connection_id=connection.connection_id):
        try:
            async for msg in ws:
                connection.client_frame()
                if msg.type is WSMsgType.TEXT:
                    connection.budget.read(len(msg.data))
                    await _handle_frame(dispatcher, connection, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    connection.send_json({"type": "error", "code": "invalid_message",
                                          "message": "Send frames as JSON text, not binary."})
                connection.first_frame_handled()
                if not await connection.pause(max(throttle.charge(1), connection.budget.wait_s())):
                    break  # frames it buffered before it went are answered for nobody
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("socket {} failed", connection.connection_id)
        finally:
            expiry.cancel()
            found.bridge.unregister(connection)
            await connection.close()
            disarm(ws)
    return ws


def close_revoked_sockets(bridge: AgentWebSocketBridge, user_id: str, reason: str) -> None:
    """The user's sockets on this process close with 4401: the tokens that opened them are revoked."""
    for connection in bridge.connections_of(user_id):
        if isinstance(connection, SocketConnection) and not connection.closing:
            connection.close_soon(CloseCode.UNAUTHORIZED, reason)


def _close_when_expired(connection: SocketConnection, expires_at: datetime) -> asyncio.TimerHandle:
    """A socket lives no longer than the token that opened it."""
    delay = max(0.0, (expires_at - datetime.now(UTC)).total_seconds())
    return asyncio.get_running_loop().call_later(
        delay, connection.close_soon, CloseCode.UNAUTHORIZED, "token expired: log in again")


def origin_allowed(request: web.Request, allowed: list[str]) -> bool:
    """Programs send no Origin; a browser page may open a socket only from this server or the list."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    own = f"{request.scheme}://{request.host}"
    return origin == own or origin in allowed
