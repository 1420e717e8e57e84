"""Errors in the protocol's form: {"error": {"code", "message"}} with the matching status."""

from __future__ import annotations

import json
import time

from aiohttp import web
from loguru import logger

from domain.errors import DomainError

STATUS_BY_CODE = {
    "invalid_json": 400,
    "invalid_message": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "thread_busy": 409,
    "message_too_large": 413,
    "validation_error": 422,
    "limit_exceeded": 429,
    "rate_limited": 429,
    "internal_error": 500,
    "server_not_ready": 503,
}


class ApiError(Exception):
    """An error the entrypoints find (the edge policy, a handler); the domain raises DomainError."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_response(code: str, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"error": {"code": code, "message": message}})
    return web.Response(status=STATUS_BY_CODE.get(code, 400), text=body,
                        content_type="application/json", headers=headers)


def from_domain(exc: DomainError) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if exc.code == "unauthorized" else None
    return error_response(exc.code, exc.message, headers=headers)


class OutageAnswers:
    """Requests and frames answered server_not_ready while the database is away: a warning every
    few seconds with their count, not a line each (one outage under load answered ~1,000)."""

    INTERVAL_S = 5.0

    def __init__(self) -> None:
        self._count = 0
        self._last_line: float | None = None

    def note(self, exc: BaseException) -> None:
        self._count += 1
        now = time.monotonic()
        if self._last_line is None or now - self._last_line >= self.INTERVAL_S:
            logger.warning("the database is away ({}): {} requests answered server_not_ready so far",
                           type(exc.__cause__ or exc).__name__, self._count)
            self._last_line = now


# Only a count for the log, shared by the HTTP middleware and the sockets of this process.
OUTAGE_ANSWERS = OutageAnswers()
