"""Middlewares: request ids and client addresses, errors to the protocol's JSON, the edge policy for
the address and headers, bearer authentication; and the security headers every response carries."""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import secrets
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler
from loguru import logger

from domain.errors import DomainError, RateLimited, StorageUnavailable, Unauthorized
from entrypoints.appkeys import LIFECYCLE, REQUEST_ID, SETTINGS, USER, services
from entrypoints.edge import READ_HEADERS, check_text, check_texts
from entrypoints.errors import OUTAGE_ANSWERS, ApiError, error_response, from_domain

_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
PUBLIC_API = frozenset({"/api/auth/register", "/api/auth/login", "/api/openapi.json"})

# The client's address: the direct peer, or what a trusted proxy says in X-Forwarded-For.
CLIENT_IP = web.RequestKey("client_ip", str)
UNKNOWN_CLIENT = "unknown"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The web UI (entrypoints/static) loads only its own files, has no inline script or style, and opens
# its WebSocket to the same host ('self' covers ws:/wss: of the same origin).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               413: "message_too_large", 400: "invalid_message"}


def request_id_of(request: web.Request) -> str:
    return request[REQUEST_ID]


def client_ip_of(request: web.Request) -> str:
    return request.get(CLIENT_IP) or request.remote or UNKNOWN_CLIENT


def _parse_ip(text: str) -> IPAddress | None:
    """An address as proxies write it: bare, "[v6]" or with a port; IPv4-mapped v6 as v4."""
    text = text.strip()
    if text.startswith("["):  # [2001:db8::1]:4711
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # 192.0.2.1:4711
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=16)
def trusted_networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """security.trusted_proxies as networks; an entry that is no address or CIDR is logged and skipped."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            logger.error("security.trusted_proxies: {!r} is not an address or CIDR; ignored", entry)
    return tuple(networks)


def _trusted(address: IPAddress | None, networks: tuple[IPNetwork, ...]) -> bool:
    return address is not None and any(address in network for network in networks)


def client_address(peer: str | None, forwarded_for: Iterable[str], networks: tuple[IPNetwork, ...]) -> str:
    """The client's address: X-Forwarded-For is believed only when the peer is a trusted proxy.

    Walking the list from the right (the hop nearest us), trusted proxies are skipped and the
    first address that is not one is the client: entries left of it could be written by anyone.
    """
    peer_address = _parse_ip(peer) if peer else None
    if peer_address is None:
        return peer or UNKNOWN_CLIENT
    if not _trusted(peer_address, networks):
        return str(peer_address)
    hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
    nearest = peer_address
    for hop in reversed(hops):
        address = _parse_ip(hop)
        if address is None:  # garbage in the chain: the last hop we can vouch for
            return str(nearest)
        if not _trusted(address, networks):
            return str(address)
        nearest = address
    return str(nearest)  # every hop is a trusted proxy: the left-most is the best we know


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request's id and its client's address, on the request and on every log line it writes."""
    offered = request.headers.get("X-Request-ID", "")
    request_id = offered if _REQUEST_ID.match(offered) else f"req_{secrets.token_hex(8)}"
    request[REQUEST_ID] = request_id
    networks = trusted_networks(tuple(request.app[SETTINGS].security.trusted_proxies))
    client_ip = client_address(request.remote, request.headers.getall("X-Forwarded-For", ()), networks)
    request[CLIENT_IP] = client_ip
    with logger.contextualize(request_id=request_id, client_ip=client_ip):
        response = await handler(request)
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StorageUnavailable as exc:
        OUTAGE_ANSWERS.note(exc)
        return error_response(exc.code, exc.message, headers={"Retry-After": "1"})
    except DomainError as exc:
        response = from_domain(exc)
        if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return response
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
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None  # a 405 keeps it
        return error_response(code, message, headers=allow)
    except Exception:
        logger.exception("unhandled error in {} {}", request.method, request.path)
        return error_response("internal_error", "Something went wrong on the server; it was logged.")


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Path parameters, query parameters and the headers handlers read pass the edge policy
    (bodies and frames pass it where they are parsed)."""
    check_texts(request.match_info.items(), "path parameter")
    check_texts(request.query.items(), "query parameter")
    for name in READ_HEADERS:
        if (value := request.headers.get(name)) is not None:
            check_text(value, f"header '{name}'")
    return await handler(request)


@web.middleware
async def authentication(request: web.Request, handler: Handler) -> web.StreamResponse:
    # No route, or not this method: 404 or 405 (with Allow) whether or not the caller has a token.
    no_route = request.match_info.http_exception is not None
    if no_route or not request.path.startswith("/api/") or request.path in PUBLIC_API:
        return await handler(request)
    if not request.app[LIFECYCLE].ready:
        return error_response("server_not_ready", "The server is starting or stopping; retry shortly.")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Send 'Authorization: Bearer <access_token>'; log in to get one.")
    request[USER] = await services(request.app).auth.authenticate(token.strip())
    return await handler(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: runs for every response just before its headers go out, streamed
    ones (SSE, the WebSocket handshake) included; a handler's own value wins, but /api/ is never
    stored by a cache."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"
