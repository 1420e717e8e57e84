"""Opaque page cursors and the query parameters of paged lists."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from aiohttp import web

from domain.conversations import Position
from entrypoints.errors import ApiError

MAX_CURSOR_CHARS = 512


def encode(position: Position | None) -> str | None:
    if position is None:
        return None
    at, key = position
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{key}".encode()).decode().rstrip("=")


def decode(cursor: str | None, name: str) -> Position | None:
    """A cursor this server gave out; anything else names no page, as an unknown id names nothing:
    404 not_found."""
    if not cursor:
        return None
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError(cursor)
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, key = text.partition("|")
        moment = datetime.fromisoformat(at)
        if not key or moment.tzinfo is None:
            raise ValueError(text)
        return moment, key
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError("not_found", f"'{name}' is not a cursor this server gave out.") from None


def limit_of(request: web.Request, default: int, most: int) -> int:
    text = request.query.get("limit")
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= most:
        raise ApiError("invalid_message", f"'limit' must be a whole number from 1 to {most}.")
    return int(text)
