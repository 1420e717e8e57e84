"""Errors in the protocol's form: {"error": {"code", "message"}} with the matching status."""

from __future__ import annotations

import json

from aiohttp import web

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
