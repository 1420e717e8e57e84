"""Each user's own MCP servers: registered, listed and removed by their user only.

The tools of every server (the operator's and the user's own) reach a run through the
ToolCatalog's source (adapters/mcp); this is the use case behind /api/mcp/servers.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from urllib.parse import urlsplit

from domain.entities import AuditAction, AuditEntry, McpServer
from domain.errors import Conflict, LimitExceeded, NotFound, ValidationFailed
from domain.ports import AuditLog, Clock, McpServerRepository, UrlGuard
from domain.tools.base import NAMESPACE, Policy
from domain.tools.catalog import ToolCatalog

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
HEADER_NAME = r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}"
_HEADER_NAME = re.compile(HEADER_NAME)
# A server's name; the same rule as server_name_problem's, as one regular expression (for schemas).
# (at most 32 characters: said apart, as maxLength).
SERVER_NAME = r"^[a-z0-9](?:_?[a-z0-9-])*$"
MAX_HEADERS = 16
# Headers the transport sets itself: a user's value for one would break or smuggle the request.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "content-type",
                              "accept", "upgrade", "te", "trailer", "keep-alive", "proxy-authorization"})


def reserved_header_pattern() -> str:
    """RESERVED_HEADERS and `mcp-*`, any case, as one regular expression without flags (JSON Schema)."""
    def any_case(word: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)  # c: '-' only

    words = [*(any_case(header) for header in sorted(RESERVED_HEADERS)), any_case("mcp-") + ".*"]
    return "^(?:" + "|".join(words) + ")$"


MAX_HEADER_VALUE = 4096
MAX_URL = 2048


def server_name_problem(name: str) -> str | None:
    """Why `name` cannot name an MCP server (it prefixes its tools' names: `{server}__{tool}`)."""
    if not _NAME.fullmatch(name):
        return ("a server name is 1 to 32 lowercase letters, digits, '-' or '_', starting with a letter "
                "or digit")
    if NAMESPACE in name or name.endswith("_"):
        return f"a server name may not hold {NAMESPACE!r} or end with '_' (it prefixes its tools' names)"
    return None


class McpServers:
    def __init__(self, *, servers: McpServerRepository, guard: UrlGuard, catalog: ToolCatalog, clock: Clock,
                 audit: AuditLog, operator_names: Collection[str], max_per_user: int) -> None:
        self._servers = servers
        self._guard = guard
        self._catalog = catalog
        self._clock = clock
        self._audit = audit
        self._operator_names = frozenset(operator_names)
        self._max_per_user = max_per_user

    async def add(self, user_id: str, name: str, url: str, headers: Mapping[str, str] | None = None,
                  approval: str = Policy.AUTO) -> McpServer:
        if (problem := server_name_problem(name)) is not None:
            raise ValidationFailed(f"'name': {problem}.")
        if name in self._operator_names:
            raise Conflict(f"{name!r} is the name of a server this service offers; choose another.")
        headers = dict(headers or {})
        _check_headers(headers)
        if not _http_url(url):
            raise ValidationFailed("'url' must be an http:// or https:// URL of at most 2048 characters.")
        await self._guard.check(url)
        mine = await self._servers.list_for_user(user_id)
        if len(mine) >= self._max_per_user:
            raise LimitExceeded(f"You have {len(mine)} MCP servers, the most you may; remove one first.")
        server = McpServer(user_id=user_id, name=name, url=url, created_at=self._clock.now(), headers=headers,
                           approval=Policy(approval).value)
        await self._servers.add(server)  # Conflict: one of that name already
        self._catalog.forget(user_id)
        self._audit.record(AuditEntry(user_id=user_id, action=AuditAction.MCP_SERVER_ADDED,
                                      at=server.created_at, detail=name))
        return server

    async def list(self, user_id: str) -> list[McpServer]:
        return list(await self._servers.list_for_user(user_id))

    async def remove(self, user_id: str, name: str) -> None:
        if not await self._servers.delete(user_id, name):
            raise NotFound("You have no MCP server of that name.")
        self._catalog.forget(user_id)
        self._audit.record(AuditEntry(user_id=user_id, action=AuditAction.MCP_SERVER_REMOVED,
                                      at=self._clock.now(), detail=name))


def _http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return len(url) <= MAX_URL and parts.scheme in ("http", "https") and bool(parts.hostname) \
            and parts.port != 0
    except ValueError:  # a port out of range, a bracketed host that is no IPv6 address
        return False


def _check_headers(headers: Mapping[str, str]) -> None:
    if len(headers) > MAX_HEADERS:
        raise ValidationFailed(f"'headers': at most {MAX_HEADERS}.")
    for key, value in headers.items():
        if not _HEADER_NAME.fullmatch(key):
            raise ValidationFailed(f"'headers': {key[:64]!r} is not a header name.")
        if key.lower() in RESERVED_HEADERS or key.lower().startswith("mcp-"):
            raise ValidationFailed(f"'headers': {key!r} is set by the connection itself, not by you.")
        if not isinstance(value, str) or len(value) > MAX_HEADER_VALUE or any(c in value for c in "\r\n\0"):
            raise ValidationFailed(f"'headers': the value of {key!r} must be one line of at most "
                                   f"{MAX_HEADER_VALUE} characters.")
