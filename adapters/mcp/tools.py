"""An MCP server's tools as the domain's Tools: named `{server}__{tool}`, called with their user's
headers, their results made JSON-friendly and cut to size."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import mcp_types as types

from adapters.mcp.client import Endpoint, Listing, McpConnector, McpError, scrub
from domain.context import UserExecutionContext
from domain.errors import ToolError
from domain.llm import ToolSpec
from domain.tools.base import NAMESPACE

MAX_NAME = 64  # OpenAI function names: ^[a-zA-Z0-9_-]{1,64}$
MAX_DESCRIPTION = 2000
MAX_ERROR = 2000
MAX_TOOLS = 128  # per server (OpenAI takes at most 128 tools in one request)
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_-]")


@dataclass(frozen=True, slots=True)
class Offered:
    """A server's tool as offered: the name the model sees, and the tool the server knows."""

    name: str
    tool: types.Tool


def offered_tools(server: str, tools: Iterable[types.Tool],
                  allow: Iterable[str] | None = None) -> list[Offered]:
    """The tools named `{server}__{tool}`, each name valid for every model (^[a-zA-Z0-9_-]{1,64}$).
    A name that had to change (characters replaced by '_', cut at 64) yields to the names that did
    not, and one that then meets another gets `_2`, `_3`, ...: deterministic, whatever order the
    server lists them in. Tools whose input schema is not an object are left out, and those past
    the first MAX_TOOLS (by name)."""
    allowed = None if allow is None else set(allow)
    prefix = f"{server}{NAMESPACE}"
    usable = sorted((tool for tool in tools
                     if (allowed is None or tool.name in allowed) and isinstance(tool.input_schema, dict)
                     and tool.input_schema.get("type", "object") == "object"),
                    key=lambda tool: tool.name)[:MAX_TOOLS]
    bases = {tool.name: (prefix + (_NOT_NAME.sub("_", tool.name) or "tool"))[:MAX_NAME] for tool in usable}
    taken: set[str] = set()
    offered: list[Offered] = []
    for tool in sorted(usable, key=lambda tool: (bases[tool.name] != prefix + tool.name, tool.name)):
        base = bases[tool.name]
        name, n = base, 1
        while name in taken:
            n += 1
            suffix = f"_{n}"
            name = base[:MAX_NAME - len(suffix)] + suffix
        taken.add(name)
        offered.append(Offered(name=name, tool=tool))
    return sorted(offered, key=lambda item: item.tool.name)


class McpTool:
    """One MCP tool for one user's run. `server` and `owner` are what GET /api/tools shows."""

    source = "mcp"

    def __init__(self, *, offered: Offered, server: str, owner: str, approval: str, user_id: str,
                 endpoint: Endpoint, listing: Listing, connector: McpConnector,
                 max_result_chars: int) -> None:
        tool = offered.tool
        schema = dict(tool.input_schema)
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        description = tool.description or tool.title or f"{tool.name} (from the MCP server {server})"
        self.spec = ToolSpec(name=offered.name, description=description[:MAX_DESCRIPTION],
                             parameters=schema)
        hints = tool.annotations
        # Hints (unknown: not idempotent): a server that lies about them misleads only its own calls.
        self.idempotent = hints is not None and (hints.idempotent_hint is True
                                                 or hints.read_only_hint is True)
        self.approval = approval if approval in ("auto", "ask") else "ask"  # unknown: the careful one
        self.server = server
        self.owner = owner
        self.remote_name = tool.name
        self._user_id = user_id
        self._endpoint = endpoint
        self._listing = listing
        self._connector = connector
        self._max_chars = max_result_chars

    def __repr__(self) -> str:
        return f"McpTool({self.spec.name!r}, owner={self.owner!r})"

    async def __call__(self, context: UserExecutionContext, arguments: Mapping[str, Any], *,
                       call_key: str) -> Any:
        if context.user_id != self._user_id:  # built for one user's run: never anyone else's
            raise ToolError(f"there is no tool named {self.spec.name!r}")
        try:
            result = await self._connector.call_tool(self._endpoint, self.remote_name, arguments,
                                                      self._listing)
        except McpError as exc:
            raise ToolError(str(exc)) from None
        if result.is_error:
            text = _text_of(result.content) or "the tool reported an error"
            raise ToolError(scrub(_cut(text, MAX_ERROR)[0], self._endpoint))
        return result_value(result, self._max_chars)


def result_value(result: types.CallToolResult, max_chars: int) -> Any:
    """The result as JSON data: its structured content if any (and within `max_chars` as JSON),
    else its content as text; a text past `max_chars` is cut there, with a note saying so."""
    text = _text_of(result.content)
    if result.structured_content is not None:
        value: Any = result.structured_content
        encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
        if len(encoded) <= max_chars:
            return value
        text = text or encoded  # too long: cut the text, which says the same for most servers
    cut, total = _cut(text, max_chars)
    if total <= max_chars:
        return cut
    return f"{cut}\n[cut: the result was {total} characters; only the first {len(cut)} are shown]"


def _cut(text: str, limit: int) -> tuple[str, int]:
    return text[:limit], len(text)


def _text_of(content: Iterable[types.ContentBlock]) -> str:
    parts: list[str] = []
    for block in content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.ImageContent | types.AudioContent):
            kind = "image" if isinstance(block, types.ImageContent) else "audio"
            parts.append(f"[{kind}: {block.mime_type}, {len(block.data) * 3 // 4} bytes, not shown]")
        elif isinstance(block, types.ResourceLink):
            parts.append(f"[resource: {block.name} {block.uri}]")
        elif isinstance(block, types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, types.TextResourceContents):
                parts.append(resource.text)
            else:
                parts.append(f"[resource: {resource.uri}, {resource.mime_type or 'binary'}, not shown]")
        else:
            parts.append(f"[{getattr(block, 'type', 'content')}: not shown]")
    return "\n".join(parts)
