"""GET /ws: authenticate, register with the bridge, read frames in one loop, always unregister."""

from __future__ import annotations

import asyncio
import json
import secrets

from aiohttp import WSMsgType, web
from loguru import logger

from adapters.websocket import SocketConnection
from domain.errors import Unauthorized
from entrypoints.appkeys import LIFECYCLE, SETTINGS, services
from entrypoints.middlewares import request_id_of
from entrypoints.ws_frames import FrameDispatcher

CLOSE_TRY_AGAIN = 1013
CLOSE_UNAUTHORIZED = 4401
# A new socket's live events wait this long at most for a first frame (usually a resume).
FIRST_FRAME_PATIENCE_S = 0.5


async def _token_from_first_frame(ws: web.WebSocketResponse, timeout_s: float) -> str | None:
    try:
        msg = await ws.receive(timeout=timeout_s)
    except TimeoutError:
        return None
    if msg.type is not WSMsgType.TEXT:
        return None
    try:
        frame = json.loads(msg.data)
    except json.JSONDecodeError:
        return None
    if not isinstance(frame, dict) or frame.get("type") != "auth":
        return None
    token = frame.get("token")
    return token if isinstance(token, str) else None


async def websocket(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS].server
    ws = web.WebSocketResponse(heartbeat=settings.ws_heartbeat_s,
                               max_msg_size=settings.ws_max_frame_bytes)
    await ws.prepare(request)
    lifecycle = request.app[LIFECYCLE]
    if not lifecycle.ready or lifecycle.draining:
        await ws.close(code=CLOSE_TRY_AGAIN, message=b"server not ready: try again shortly")
        return ws
    found = services(request.app)

    header = request.headers.get("Authorization", "")
    scheme, _, header_token = header.partition(" ")
    token = header_token.strip() if scheme.lower() == "bearer" else None
    if token is None:
        token = await _token_from_first_frame(ws, settings.ws_auth_timeout_s)
    try:
        user = await found.auth.authenticate(token)
    except Unauthorized as exc:
        await ws.close(code=CLOSE_UNAUTHORIZED, message=exc.message.encode()[:120])
        return ws

    connection = SocketConnection(ws, user_id=user.id, connection_id=f"conn_{secrets.token_hex(8)}",
                                  max_queue=settings.ws_send_queue)
    connection.start()
    connection.send_json({"type": "ready", "user_id": user.id,
                          "connection_id": connection.connection_id})
    connection.hold_until_first_frame(FIRST_FRAME_PATIENCE_S)
    found.bridge.register(connection)
    dispatcher = FrameDispatcher(chat=found.chat, conversations=found.conversations,
                                 connection=connection,
                                 request_id=request_id_of(request))
    with logger.contextualize(user_id=user.id, connection_id=connection.connection_id):
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await dispatcher.handle(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    connection.send_json({"type": "error", "code": "invalid_message",
                                          "message": "Send frames as JSON text, not binary."})
                connection.first_frame_handled()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("socket {} failed", connection.connection_id)
        finally:
            found.bridge.unregister(connection)
            await connection.close()
    return ws
