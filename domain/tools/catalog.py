"""The tools a user's agent can use: the builtin ones, then those of the tool sources (MCP)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from domain.ports import ToolSource
from domain.tools.base import ExternalTools, ToolBox


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """One tool as GET /api/tools shows it."""

    name: str
    description: str
    input_schema: dict[str, Any]
    approval: str
    source: str  # "builtin", or "mcp" (then `server` and `owner` say whose)
    server: str | None = None
    owner: str | None = None  # "operator" (offered to everyone) or "user" (the caller's own)


class ToolCatalog:
    """One per process. A run's toolbox is the builtin one with each source's tools for its user
    added; with no source (or nothing from one) it is the builtin toolbox itself, shared."""

    def __init__(self, *, builtin: ToolBox, sources: Sequence[ToolSource] = (),
                 external_call_limit: int | None = None) -> None:
        self._builtin = builtin
        self._sources = tuple(sources)
        self._external_call_limit = external_call_limit  # per run, all sources' tools together

    @property
    def builtin(self) -> ToolBox:
        return self._builtin

    async def for_user(self, user_id: str) -> ToolBox:
        toolbox = self._builtin
        for source in self._sources:
            toolbox = toolbox.with_external(await source.tools_for(user_id), limit=self._external_call_limit)
        return toolbox

    def forget(self, user_id: str) -> None:
        for source in self._sources:
            source.forget(user_id)

    async def aclose(self) -> None:
        for source in self._sources:
            await source.aclose()

    async def describe(self, user_id: str) -> tuple[list[ToolInfo], dict[str, str]]:
        """The user's tools, and the servers that could not be reached (name -> why)."""
        toolbox = self._builtin
        unreachable: dict[str, str] = {}
        for source in self._sources:
            external = await source.tools_for(user_id)
            unreachable.update(external.unreachable)
            toolbox = toolbox.with_external(ExternalTools(tools=external.tools))
        return [ToolInfo(name=tool.spec.name, description=tool.spec.description,
                         input_schema=dict(tool.spec.parameters),
                         approval=toolbox.policy(tool.spec.name).value,
                         source=getattr(tool, "source", "builtin"), server=getattr(tool, "server", None),
                         owner=getattr(tool, "owner", None))
                for tool in toolbox.tools()], unreachable
