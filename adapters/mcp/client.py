"""One MCP operation (list a server's tools, call one) on the official SDK, bounded in time, its
failures turned into one clear sentence that never holds a header value.

Streamable HTTP: each operation has a client of its own (its own connections, its own headers:
nothing is shared between users). The first listing probes the protocol (`server/discover`); a
call reuses what the listing learned, so it is one POST on a fresh connection. Stdio (operator
servers only): one long-lived process per server (see stdio.py), since starting one costs ~0.6 s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httpcore2
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from adapters.mcp.guard import BlockedAddress, NetworkGuard, ResponseTooLarge, http_client
from adapters.mcp.stdio import StdioSessions

log = logging.getLogger(__name__)

CLIENT_INFO = types.Implementation(name="goldenpath", version="0.1.0")
MAX_PAGES = 20  # a tools/list that pages on forever stops here
# What the SDK's transport says for an HTTP error without a JSON-RPC error in its body.
SDK_STAND_INS = frozenset({"Server returned an error response", "Not Found", "Session terminated"})
# Headers a server's settings may not set: the transport's own.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "content-type",
                              "accept", "accept-encoding", "te", "upgrade", "keep-alive"})


@dataclass(frozen=True, slots=True)
class HttpEndpoint:
    """A Streamable HTTP server as one user reaches it: with their headers (secrets: never shown)."""

    name: str
    url: str = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    guarded: bool = True  # a user's server: every connection through the NetworkGuard


@dataclass(frozen=True, slots=True)
class StdioEndpoint:
    """An operator's stdio server: a command, started once and shared."""

    name: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict, repr=False)


Endpoint = HttpEndpoint | StdioEndpoint


@dataclass(frozen=True, slots=True)
class Listing:
    """A server's tools, and what the listing learned of the server (so a call needs no probe)."""

    tools: tuple[types.Tool, ...]
    version: str  # the protocol version the server speaks
    discover: types.DiscoverResult | None  # a 2026-07-28 server's answer to the probe


class McpError(Exception):
    """An MCP operation failed; the message names the server and says why (never a header value)."""


class McpConnector:
    def __init__(self, *, guard: NetworkGuard, timeout_s: float) -> None:
        self._guard = guard
        self._timeout_s = timeout_s
        self._stdio = StdioSessions(client_info=CLIENT_INFO, timeout_s=timeout_s)

    async def aclose(self) -> None:
        await self._stdio.aclose()

    async def list_tools(self, endpoint: Endpoint) -> Listing:
        async def operation(client: Client) -> Listing:
            tools: list[types.Tool] = []
            cursor: str | None = None
            for _ in range(MAX_PAGES):
                page = await client.list_tools(cursor=cursor, cache_mode="bypass")
                tools.extend(page.tools)
                cursor = page.next_cursor
                if cursor is None:
                    break
            return Listing(tools=tuple(tools), version=client.protocol_version,
                           discover=client.session.discover_result)

        return await self._run(endpoint, operation, calling=False)

    async def call_tool(self, endpoint: Endpoint, name: str, arguments: Mapping[str, Any],
                        listing: Listing | None = None) -> types.CallToolResult:
        async def operation(client: Client) -> types.CallToolResult:
            if listing is not None and isinstance(endpoint, HttpEndpoint):
                _absorb(client, listing, name)
            return await client.call_tool(name, dict(arguments))

        return await self._run(endpoint, operation, calling=True, listing=listing)

    async def _run(self, endpoint: Endpoint, operation: Any, *, calling: bool,
                   listing: Listing | None = None) -> Any:
        statuses: list[int] = []
        try:
            async with asyncio.timeout(self._timeout_s):
                if isinstance(endpoint, StdioEndpoint):
                    return await self._stdio.run(endpoint.name, endpoint.command, endpoint.env, operation)
                async with self._http_client(endpoint, statuses) as http:
                    mode, prior = "auto", None
                    if listing is not None:  # what the listing learned: no probe
                        modern = listing.version in MODERN_PROTOCOL_VERSIONS
                        mode, prior = (listing.version, listing.discover) if modern else ("legacy", None)
                    transport = streamable_http_client(endpoint.url, http_client=http)
                    async with Client(transport, mode=mode, prior_discover=prior, cache=None,
                                      client_info=CLIENT_INFO,
                                      read_timeout_seconds=self._timeout_s) as client:
                        return await operation(client)
        except McpError:
            raise
        except BaseException as exc:  # ExceptionGroups of the SDK's task groups among them
            task = asyncio.current_task()
            if not isinstance(exc, Exception | BaseExceptionGroup) or _is_cancellation(exc) or (
                    task is not None and task.cancelling()):  # the caller is being cancelled
                raise
            message = self._describe(endpoint, exc, statuses, calling=calling)
            log.info("MCP server %s: %s", endpoint.name, _leaf_names(exc))
            raise McpError(scrub(message, endpoint)) from None

    def _http_client(self, endpoint: HttpEndpoint, statuses: list[int]) -> httpx2.AsyncClient:
        async def record(response: httpx2.Response) -> None:
            if response.status_code >= 400:
                statuses.append(response.status_code)

        headers = {key: value for key, value in endpoint.headers.items()
                   if key.lower() not in RESERVED_HEADERS and not key.lower().startswith("mcp-")}
        hooks = {"response": [record]}
        if endpoint.guarded:
            return self._guard.http_client(headers=headers, timeout_s=self._timeout_s, event_hooks=hooks)
        return http_client(headers=headers, timeout_s=self._timeout_s, backend=None, event_hooks=hooks)

    def _describe(self, endpoint: Endpoint, exc: BaseException, statuses: Sequence[int], *,
                  calling: bool) -> str:
        server = f"the MCP server {endpoint.name!r}"
        unreachable = f"{server} could not be reached"
        # A listing that fails leaves the server unreachable; a call that fails says what it got.
        answered = f"{server} answered" if calling else f"{unreachable}: it answered"
        status = statuses[-1] if statuses else None
        http = f"HTTP {status} ({_phrase(status)})" if status is not None else ""
        leaves = _leaves(exc)
        for leaf in leaves:
            blocked = leaf if isinstance(leaf, BlockedAddress) else leaf.__cause__
            if isinstance(blocked, BlockedAddress):
                return f"{unreachable}: {blocked}"
        for leaf in leaves:
            if isinstance(leaf, ResponseTooLarge):
                return f"{server} sent {leaf}"
            if isinstance(leaf, TimeoutError | httpx2.TimeoutException | httpcore2.TimeoutException):
                if calling:
                    return f"{server} did not answer within {self._timeout_s:g} s"
                return f"{unreachable}: it did not answer within {self._timeout_s:g} s"
        for leaf in leaves:
            if isinstance(leaf, httpx2.ConnectError | httpcore2.ConnectError | ConnectionError):
                return f"{unreachable}: {_connect_detail(leaf)}"
            if isinstance(leaf, FileNotFoundError | PermissionError):
                return f"{unreachable}: its command could not be started ({type(leaf).__name__})"
        for leaf in leaves:
            # The server's own JSON-RPC error says more than its status; the SDK's stand-ins do not.
            if isinstance(leaf, MCPError) and not (http and leaf.message in SDK_STAND_INS):
                return f"{answered} with an error: {_one_line(leaf.message)}" + (f" ({http})" if http else "")
        if http:
            return f"{answered} {http}"
        for leaf in leaves:
            if isinstance(leaf, ValidationError | RuntimeError | httpx2.HTTPError | httpcore2.ProtocolError):
                return f"{answered} with something that is not valid MCP ({type(leaf).__name__})"
        return f"{unreachable}: {type(leaves[0]).__name__ if leaves else 'an unknown error'}"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def _absorb(client: Client, listing: Listing, name: str) -> None:
    """Give a fresh session the tool as the listing found it: the SDK checks a call's structured
    result against its tool's output schema (and mirrors x-mcp-header arguments) from its last
    listing, and without one it lists the tools again first, one more request per call. (A private
    method of the SDK's session; without it, that one more request.)"""
    absorb = getattr(client.session, "_absorb_tool_listing", None)
    tool = next((tool for tool in listing.tools if tool.name == name), None)
    if absorb is not None and tool is not None:
        absorb(types.ListToolsResult(tools=[tool.model_copy(deep=True)]), complete=False)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _leaf_names(exc: BaseException) -> str:
    return ", ".join(type(leaf).__name__ for leaf in _leaves(exc))


def _is_cancellation(exc: BaseException) -> bool:
    leaves = _leaves(exc)
    return bool(leaves) and all(isinstance(leaf, asyncio.CancelledError | KeyboardInterrupt | SystemExit)
                                for leaf in leaves)


def _connect_detail(exc: BaseException) -> str:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ConnectionResetError):
            return "connection reset"
        if isinstance(seen, httpcore2.ConnectError) and "could not be resolved" in str(seen):
            return str(seen)
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        seen = seen.__cause__ or seen.__context__
    return "the connection failed"


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "…"


def scrub(message: str, endpoint: Endpoint) -> str:
    """A server may echo what it was sent: no header (or env) value leaves in a message."""
    values = endpoint.headers.values() if isinstance(endpoint, HttpEndpoint) else endpoint.env.values()
    # Each value, and each long word of one (the token of "Bearer <token>", echoed alone).
    secrets = {value for value in values if len(value) >= 4}
    secrets |= {word for value in values for word in value.split() if len(word) >= 8}
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, "[redacted]")
    return message
