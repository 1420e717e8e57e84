"""Middlewares: request ids, errors to the protocol's JSON, bearer authentication."""

from __future__ import annotations

import re
import secrets

from aiohttp import web
from aiohttp.typedefs import Handler
from loguru import logger

from domain.errors import DomainError, Unauthorized
from entrypoints.appkeys import LIFECYCLE, REQUEST_ID, USER, services
from entrypoints.errors import ApiError, error_response, from_domain

_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
PUBLIC_API = frozenset({"/api/auth/register", "/api/auth/login"})

_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               413: "message_too_large", 400: "invalid_message"}


def request_id_of(request: web.Request) -> str:
    return request[REQUEST_ID]


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    offered = request.headers.get("X-Request-ID", "")
    request_id = offered if _REQUEST_ID.match(offered) else f"req_{secrets.token_hex(8)}"
    request[REQUEST_ID] = request_id
    with logger.contextualize(request_id=request_id):
        response = await handler(request)
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DomainError as exc:
        return from_domain(exc)
    except ApiError as exc:
        return error_response(exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "invalid_message")
        message = {
            404: "There is nothing at this address.",
            405: f"{request.method} is not allowed here.",
            413: "The request body is too large.",
        }.get(exc.status, exc.reason)
        return error_response(code, message)
    except Exception:
        logger.exception("unhandled error in {} {}", request.method, request.path)
        return error_response("internal_error", "Something went wrong on the server; it was logged.")


@web.middleware
async def authentication(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/api/") or request.path in PUBLIC_API:
        return await handler(request)
    if not request.app[LIFECYCLE].ready:
        return error_response("server_not_ready", "The server is starting or stopping; retry shortly.")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Send 'Authorization: Bearer <access_token>'; log in to get one.")
    request[USER] = await services(request.app).auth.authenticate(token.strip())
    return await handler(request)
