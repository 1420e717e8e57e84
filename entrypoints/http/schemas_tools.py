"""The HTTP bodies of approvals and of tools (MCP servers, the tool list), as pydantic models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr
from pydantic.json_schema import SkipJsonSchema

from domain.entities import RunStatus
from domain.mcp import HEADER_NAME, SERVER_NAME, reserved_header_pattern
from entrypoints.fields import ApprovalFields, Id
from entrypoints.http.schemas import PendingApproval, _absent_or, _Reply

# An http(s) URL with a host (a name or an IPv4 address), an optional port, no user name or
# password: what the domain and the guard take (a host is resolved and checked there).
MCP_URL = (r"^https?://[A-Za-z0-9.-]+"
           r"(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
           r"(?:[/?#][^\s]*)?$")


def _reserved_headers_refused(schema: dict[str, Any]) -> None:
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "object":
            branch["additionalProperties"] = False  # a name outside patternProperties is no header
            branch["propertyNames"] = {"pattern": f"^{HEADER_NAME}$",
                                       "not": {"pattern": reserved_header_pattern()}}


class OpenApproval(PendingApproval):
    run_id: str
    thread_id: str


class OpenApprovalList(_Reply):
    approvals: list[OpenApproval]


HeaderName = Annotated[StrictStr, Field(json_schema_extra={"pattern": f"^{HEADER_NAME}$"})]
HeaderValue = Annotated[StrictStr, Field(max_length=4096, json_schema_extra={"pattern": r"^[^\r\n\x00]*$"})]


class McpServerBody(BaseModel):
    """One of the caller's own MCP servers (Streamable HTTP)."""

    model_config = ConfigDict(extra="forbid")

    # Patterns here are shown, not enforced: the domain judges each field and says why in words.
    name: StrictStr = Field(max_length=32, json_schema_extra={"pattern": SERVER_NAME}, description=(
        "Prefixes its tools' names ({name}__{tool}): lowercase letters, digits, '-', single '_' "
        "between them."))
    # The pattern is shown, not enforced here: the domain and the guard judge the URL and say why
    # (a bracketed IPv6 address, which the pattern leaves out, is taken too).
    url: StrictStr = Field(max_length=2048, json_schema_extra={"pattern": MCP_URL}, description=(
        "http(s), no user name or password in it; not a loopback, private or link-local address "
        "unless the service allows private networks (checked again at every connection)."))
    headers: dict[HeaderName, HeaderValue] | None = Field(
        None, max_length=16, json_schema_extra=_reserved_headers_refused, description=(
            "Sent with each request (e.g. Authorization): stored encrypted, never shown again. Not "
            "the headers the connection sets itself (Host, Content-Type, Mcp-*, ...)."))
    approval: Literal["auto", "ask"] = "auto"


class McpServerView(_Reply):
    name: str
    url: str
    header_names: list[str] = Field(description="Which headers are set; their values are never returned.")
    approval: Literal["auto", "ask"]
    created_at: datetime


class McpServerList(_Reply):
    servers: list[McpServerView]


class ToolView(_Reply):
    name: str
    description: str
    input_schema: dict[str, Any]
    approval: Literal["auto", "ask"]
    source: Literal["builtin", "mcp"]
    server: str | SkipJsonSchema[None] = _absent_or("The MCP server of an MCP tool.")
    owner: Literal["operator", "user"] | SkipJsonSchema[None] = _absent_or(
        "An MCP tool's server: offered to everyone (operator), or the caller's own (user).")


class UnreachableServer(_Reply):
    server: str
    reason: str


class ToolList(_Reply):
    tools: list[ToolView]
    unreachable: list[UnreachableServer] = Field(description="Servers whose tools could not be listed "
                                                 "just now; a call of their tools fails with the reason.")


class ApprovalBody(ApprovalFields):
    """A decision on a tool call the run asked about (approval_required)."""

    model_config = ConfigDict(extra="forbid")

    run_id: Id | None = Field(None, description="Not read: the path names the run (taken so that the "
                              "`approval` frame's fields can be sent as they are).")


class ApprovalAccepted(_Reply):
    run_id: str
    tool_call_id: str
    approved: bool
    status: RunStatus


class GrantView(_Reply):
    grant_id: str
    tool: str
    scope: Literal["thread", "always"]
    thread_id: str | SkipJsonSchema[None] = _absent_or("Present for a grant in one thread.")
    created_at: datetime


class GrantList(_Reply):
    grants: list[GrantView]
