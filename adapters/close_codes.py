"""The WebSocket close codes of the protocol (docs/protocol.md), one place for the server and the client."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    # The client closed, or the server ended a socket with nothing wrong.
    NORMAL = 1000
    # The server is shutting down: reconnect elsewhere and resume.
    GOING_AWAY = 1001
    # A text frame that is not valid UTF-8 (RFC 6455); aiohttp sends it.
    INVALID_TEXT = 1007
    # A forbidden Origin: a page of another site may not open a socket here.
    POLICY = 1008
    # A frame over server.ws_max_frame_bytes; aiohttp sends it.
    TOO_BIG = 1009
    # Try again later: the server is starting, draining, or the user holds too many sockets.
    TRY_AGAIN = 1013
    # No token, a bad or expired one, or one revoked by a logout or password change.
    UNAUTHORIZED = 4401
    # The client reads too slowly to keep up with its events: reconnect and resume.
    TOO_SLOW = 4408
