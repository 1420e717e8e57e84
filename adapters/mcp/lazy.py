"""The MCP adapters as the container builds them: the MCP SDK and its HTTP stack (about 0.5 s of
imports and 21 MiB, measured) are loaded when a server is first used, not at every start. A
deployment with no operator server whose users have registered none never loads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from domain.ports import McpServerRepository
from domain.tools.base import ExternalTools

if TYPE_CHECKING:
    from adapters.mcp.guard import NetworkGuard
    from adapters.mcp.source import McpOptions, McpToolSource, OperatorServer


class LazyNetworkGuard:
    """The UrlGuard port; the guard itself (adapters/mcp/guard.py) is made at its first use."""

    def __init__(self, *, allow_private_networks: bool) -> None:
        self._allow_private_networks = allow_private_networks
        self._guard: NetworkGuard | None = None

    def guard(self) -> NetworkGuard:
        if self._guard is None:
            from adapters.mcp.guard import NetworkGuard

            self._guard = NetworkGuard(allow_private_networks=self._allow_private_networks)
        return self._guard

    async def check(self, url: str) -> None:
        await self.guard().check(url)


class LazyMcpToolSource:
    """The ToolSource port; McpToolSource is made when the first user with a server (or any user,
    when the operator has servers) starts a run. Until then a run costs one read: the user's servers."""

    def __init__(self, *, operator_servers: Sequence[OperatorServer], servers: McpServerRepository,
                 settings: McpOptions, guard: LazyNetworkGuard) -> None:
        self._operator_servers = operator_servers
        self._servers = servers
        self._settings = settings
        self._guard = guard
        self._source: McpToolSource | None = None

    async def tools_for(self, user_id: str) -> ExternalTools:
        if self._source is None:
            if not self._operator_servers and not await self._servers.list_for_user(user_id):
                return ExternalTools()
            from adapters.mcp.source import McpToolSource

            self._source = McpToolSource(operator_servers=self._operator_servers, servers=self._servers,
                                         settings=self._settings, guard=self._guard.guard())
        return await self._source.tools_for(user_id)

    def forget(self, user_id: str) -> None:
        if self._source is not None:
            self._source.forget(user_id)

    async def aclose(self) -> None:
        if self._source is not None:
            await self._source.aclose()
