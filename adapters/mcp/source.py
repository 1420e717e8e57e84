"""McpToolSource: the ToolSource of MCP servers, the operator's and each user's own.

A server's tool list is cached per user and server for `list_ttl_s` (an operator server whose
headers do not name the user is listed once for everyone: every user would send the same request);
the first listings of one key share one request; a server that cannot be listed is named in
`unreachable` and tried again after a backoff (2 s, doubling to 30 s), not at every run.

A user's server is reached through the NetworkGuard, with that user's headers, for that user only:
its cache entries are keyed by the user, the server and a digest of its URL and headers, so a
server registered again with other credentials is listed again. Operator servers are trusted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from adapters.mcp.client import Endpoint, HttpEndpoint, Listing, McpConnector, McpError, StdioEndpoint
from adapters.mcp.guard import NetworkGuard
from adapters.mcp.tools import McpTool, offered_tools
from domain.entities import McpServer
from domain.ports import McpServerRepository
from domain.tools.base import ExternalTools, Tool

log = logging.getLogger(__name__)

USER_ID = "{user_id}"
SWEEP_AT = 4096  # cache entries before the expired ones are swept


class OperatorServer(Protocol):
    """What the source reads of an operator's server (container.settings.McpServerSettings)."""

    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str | None: ...
    @property
    def command(self) -> str | list[str] | None: ...
    @property
    def env(self) -> Mapping[str, str]: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def approval(self) -> str: ...
    @property
    def tools(self) -> list[str] | None: ...


class McpOptions(Protocol):
    """What the source reads of the mcp settings (container.settings.McpSettings)."""

    @property
    def timeout_s(self) -> float: ...
    @property
    def max_result_chars(self) -> int: ...
    @property
    def list_ttl_s(self) -> float: ...


@dataclass(slots=True)
class _Entry:
    listing: Listing | None  # None: the listing failed, `reason` says why
    reason: str
    until: float  # the listing's expiry, or when to try again
    failures: int = 0


@dataclass(frozen=True, slots=True)
class _Target:
    """One server as one user reaches it."""

    name: str
    owner: str  # "operator" or "user"
    approval: str
    allow: tuple[str, ...] | None
    endpoint: Endpoint
    key: tuple[str, ...]  # its cache entry
    user_id: str | None  # whose entry it is (forget() drops it); None: shared by everyone


class McpToolSource:
    def __init__(self, *, operator_servers: Sequence[OperatorServer], servers: McpServerRepository,
                 settings: McpOptions, guard: NetworkGuard, clock: Callable[[], float] = time.monotonic,
                 connector: McpConnector | None = None, backoff_s: float = 2.0,
                 max_backoff_s: float = 30.0) -> None:
        self._operator = list(operator_servers)
        self._servers = servers
        self._settings = settings
        self._clock = clock
        self._connector = connector or McpConnector(guard=guard, timeout_s=settings.timeout_s)
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._entries: dict[tuple[str, ...], _Entry] = {}
        self._listing: dict[tuple[str, ...], asyncio.Task[_Entry]] = {}
        self._generations: dict[str, int] = {}  # per user: forget() makes listings in flight stale

    async def aclose(self) -> None:
        """Stop the operator's stdio servers; wait for listings in flight to end."""
        for task in list(self._listing.values()):
            task.cancel()
        await asyncio.gather(*self._listing.values(), return_exceptions=True)
        await self._connector.aclose()

    def forget(self, user_id: str) -> None:
        self._generations[user_id] = self._generations.get(user_id, 0) + 1
        for key in [key for key in self._entries if key[1] == user_id]:
            del self._entries[key]

    async def tools_for(self, user_id: str) -> ExternalTools:
        targets = [*(self._operator_target(server, user_id) for server in self._operator),
                   *self._user_targets(user_id, await self._servers.list_for_user(user_id))]
        entries = await asyncio.gather(*(self._entry(target) for target in targets))
        tools: list[Tool] = []
        unreachable: dict[str, str] = {}
        for target, entry in zip(targets, entries, strict=True):
            if entry.listing is None:
                unreachable[target.name] = entry.reason
                continue
            for offered in offered_tools(target.name, entry.listing.tools, target.allow):
                tools.append(McpTool(offered=offered, server=target.name, owner=target.owner,
                                     approval=target.approval, user_id=user_id, endpoint=target.endpoint,
                                     listing=entry.listing, connector=self._connector,
                                     max_result_chars=self._settings.max_result_chars))
        return ExternalTools(tools=tuple(tools), unreachable=unreachable)

    def _operator_target(self, server: OperatorServer, user_id: str) -> _Target:
        endpoint: Endpoint
        if server.url is not None:
            personal = any(USER_ID in value for value in server.headers.values())
            headers = {key: value.replace(USER_ID, user_id) for key, value in server.headers.items()}
            endpoint = HttpEndpoint(name=server.name, url=server.url, headers=headers, guarded=False)
        else:
            command = server.command
            argv = tuple(shlex.split(command) if isinstance(command, str) else command or ())
            endpoint = StdioEndpoint(name=server.name, command=argv, env=dict(server.env))
            personal = False
        owner = user_id if personal else "*"
        return _Target(name=server.name, owner="operator", approval=server.approval,
                       allow=None if server.tools is None else tuple(server.tools), endpoint=endpoint,
                       key=("operator", owner, server.name), user_id=user_id if personal else None)

    def _user_targets(self, user_id: str, servers: Sequence[McpServer]) -> list[_Target]:
        operator_names = {server.name for server in self._operator}
        targets = []
        for server in servers:
            if server.user_id != user_id:  # the repository's promise, checked: never another's
                continue
            if server.name in operator_names:  # the operator's came later: theirs keeps the name
                log.warning("a user's MCP server has the name of an operator server %s; left out",
                            server.name)
                continue
            endpoint = HttpEndpoint(name=server.name, url=server.url, headers=dict(server.headers))
            digest = hashlib.sha256(json.dumps([server.url, sorted(server.headers.items())]).encode())
            targets.append(_Target(name=server.name, owner="user", approval=server.approval, allow=None,
                                   endpoint=endpoint, key=("user", user_id, server.name, digest.hexdigest()),
                                   user_id=user_id))
        return targets

    async def _entry(self, target: _Target) -> _Entry:
        entry = self._entries.get(target.key)
        if entry is not None and self._clock() < entry.until:
            return entry
        task = self._listing.get(target.key)
        if task is None:
            task = asyncio.create_task(self._list(target, entry), name=f"mcp-list-{target.name}")
            self._listing[target.key] = task
            task.add_done_callback(lambda _: self._listing.pop(target.key, None))
        # Shielded: a run that stops waiting does not cancel the listing others wait for.
        return await asyncio.shield(task)

    async def _list(self, target: _Target, previous: _Entry | None) -> _Entry:
        generation = self._generations.get(target.user_id, 0) if target.user_id else 0
        try:
            listing = await self._connector.list_tools(target.endpoint)
        except Exception as exc:
            if isinstance(exc, McpError):
                reason = str(exc)
            else:  # a bug, not the server: still never the run's failure
                log.exception("listing the MCP server %s failed unexpectedly", target.name)
                reason = f"the MCP server {target.name!r} could not be listed: an unexpected error"
            failures = (previous.failures if previous is not None and previous.listing is None else 0) + 1
            delay = min(self._max_backoff_s, self._backoff_s * 2 ** (failures - 1))
            entry = _Entry(listing=None, reason=reason, until=self._clock() + delay, failures=failures)
            log.warning("MCP server %s (%s) not listed, next try in %g s: %s", target.name, target.owner,
                        delay, reason)
        else:
            entry = _Entry(listing=listing, reason="", until=self._clock() + self._settings.list_ttl_s)
        if target.user_id is None or self._generations.get(target.user_id, 0) == generation:
            self._store(target.key, entry)
        return entry

    def _store(self, key: tuple[str, ...], entry: _Entry) -> None:
        self._entries[key] = entry
        if len(self._entries) > SWEEP_AT:
            now = self._clock()
            for stale in [key for key, entry in self._entries.items() if entry.until <= now]:
                del self._entries[stale]
