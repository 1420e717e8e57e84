"""GET /api/openapi.json: the HTTP API as an OpenAPI 3.1 document, generated from its pydantic models.

Every schema comes from a pydantic model (`model_json_schema` through `models_json_schema`, or a
`TypeAdapter` for a bare string); this module only says which model goes with which route and status.
The one exception is the `data` of each agent event, written out by hand in openapi_events.py.
`tests/e2e/test_openapi.py` fails when the app serves a route that `OPERATIONS` does not describe,
and runs Schemathesis against a live server with this document.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, TypeAdapter, create_model
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from entrypoints.errors import STATUS_BY_CODE
from entrypoints.http.schemas import (
    ID_PATTERN,
    AguiEventMessage,
    AguiInput,
    ChatAccepted,
    ChatMessageBody,
    ChatResult,
    Credentials,
    ErrorBody,
    ErrorDetail,
    ForkBody,
    ForkResult,
    Health,
    MessageList,
    NotReady,
    OpenApiDocument,
    PasswordChangeBody,
    Readiness,
    Registration,
    RunCancel,
    RunEventMessage,
    RunView,
    ThreadList,
    ThreadRenameBody,
    ThreadView,
    TimelinePage,
    TokenView,
    UserView,
)
from entrypoints.http.schemas_tools import (
    ApprovalAccepted,
    ApprovalBody,
    GrantList,
    McpServerBody,
    McpServerList,
    McpServerView,
    OpenApprovalList,
    ToolList,
)
from entrypoints.openapi_events import describe_events

REF = "#/components/schemas/{model}"
JSON = "application/json"
EVENT_STREAM = "text/event-stream"
BEARER = "bearer"

DESCRIPTION = """\
A multi-user AI agent server. The wire contract, with the WebSocket and the agent events, is
docs/protocol.md; the AG-UI endpoint is docs/ag-ui.md.

Every `/api/` path but register, login and this document needs `Authorization: Bearer <access_token>`
(from login). Another user's thread or run answers 404, never 403.

Errors are `{"error": {"code", "message"}}`, the code naming the status (each response lists its codes).
A 500 is a bug. Every GET also answers HEAD; a method a path does not take answers 405 with `Allow`.

All text, in bodies, paths, queries and headers, is valid Unicode without NUL characters or lone
surrogates (400 `invalid_message`); a JSON body nests at most 32 levels deep (400 `invalid_json`).

Not described here, as OpenAPI cannot: `GET /ws`, the WebSocket (the same bearer token, on the handshake
or in a first `{"type": "auth", "token"}` frame; frames in docs/protocol.md), `GET /` (the web chat UI)
and `/static/` (its files).
"""

ERROR_MEANINGS = {
    400: "The body is not JSON, or not a request this route takes.",
    401: "No bearer token, or a bad, expired or revoked one; or wrong credentials.",
    404: "There is no such thing, or it is another user's.",
    409: "It conflicts with the current state (a name taken, a thread busy).",
    413: "The body, or the message in it, is too large.",
    422: "A field is invalid (a bad name, a weak password, a missing or ill-formed field).",
    429: "A limit of the caller's was reached: too many runs going, or messages this minute.",
    503: "The server is starting or draining; retry shortly.",
}
ERROR_HEADERS = {
    401: {"WWW-Authenticate": "`Bearer`."},
    429: {"Retry-After": "With rate_limited: the seconds to wait before sending again."},
}


@dataclass(frozen=True, slots=True)
class Reply:
    """One documented response: a pydantic model for JSON, a media type for text, or no body."""

    description: str
    model: type[BaseModel] | None = None
    media_type: str | None = None

    @property
    def mode(self) -> JsonSchemaMode:
        """Streams are described event by event, `data` as a string that holds JSON: validation mode."""
        return "validation" if self.media_type == EVENT_STREAM else "serialization"


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    replies: dict[int, Reply]
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    public: bool = False
    description: str = ""
    headers: dict[str, tuple[Any, str]] = field(default_factory=dict)
    query: dict[str, tuple[Any, str]] = field(default_factory=dict)


_PRIVATE = (401, 503)

OPERATIONS: tuple[Operation, ...] = (
    Operation("post", "/api/auth/register", "register", "Create an account", "auth",
              {201: Reply("The account.", UserView)}, (400, 409, 413, 422, 503),
              body=Registration, public=True),
    Operation("post", "/api/auth/login", "login", "Get an access token", "auth",
              {200: Reply("A bearer token.", TokenView)}, (400, 401, 413, 422, 503),
              body=Credentials, public=True,
              description="401 with the same message whether the user exists or not."),
    Operation("post", "/api/auth/logout", "logout", "Revoke every token of the caller", "auth",
              {204: Reply("Every token of the caller, on every device, is revoked.")}, _PRIVATE),
    Operation("post", "/api/auth/password", "changePassword", "Change the password", "auth",
              {200: Reply("A fresh token; every earlier one is revoked.", TokenView)},
              (400, 401, 413, 422, 503), body=PasswordChangeBody,
              description="401 when `current_password` is wrong; 422 when the new one breaks the rules."),
    Operation("get", "/api/me", "me", "Who the token belongs to", "auth",
              {200: Reply("The caller.", UserView)}, _PRIVATE),
    Operation("post", "/api/chat/message", "sendMessage", "Send a message: start a run", "chat",
              {202: Reply("The run is started or queued.", ChatAccepted),
               200: Reply("With `wait: true`: the finished run, its answer and its events.", ChatResult)},
              (400, 401, 404, 409, 413, 429, 503), body=ChatMessageBody,
              description="Without `thread_id` a new thread is started. The run's events also go to "
                          "the user's WebSockets. 404: no such thread of the caller's; 409: "
                          "`multitask: reject` and the thread is busy; 429: too many runs going "
                          "(limit_exceeded) or messages this minute (rate_limited)."),
    Operation("get", "/api/runs/{run_id}", "getRun", "A run and its status", "runs",
              {200: Reply("The run.", RunView)}, (401, 404, 503)),
    Operation("get", "/api/runs/{run_id}/events", "runEvents", "A run's events as Server-Sent Events",
              "runs", {200: Reply("The run's events (the schema is that of each event), from the first or "
                                  "after Last-Event-ID; the stream ends after the terminal event.",
                                  RunEventMessage, EVENT_STREAM)},
              (400, 401, 404, 503),
              headers={"Last-Event-ID": (Annotated[str, Field(pattern=r"^[0-9]{1,9}$")],
                                         "Resume after this `seq` (400 when it is not one).")}),
    Operation("post", "/api/runs/{run_id}/cancel", "cancelRun", "Cancel a run (idempotent)", "runs",
              {202: Reply("The run's status now.", RunCancel)}, (401, 404, 503)),
    Operation("post", "/api/runs/{run_id}/approvals", "decideApproval",
              "Approve or deny a tool call the run waits on", "approvals",
              {202: Reply("Decided: the run goes on (the tool runs, or completes `denied`).",
                          ApprovalAccepted)},
              (400, 401, 404, 409, 413, 422, 429, 503), body=ApprovalBody,
              description="404: no such run of the caller's, or it asked for no approval of that "
                          "`tool_call_id`; 409: already decided, expired, or the run ended; 429: the "
                          "caller has as many runs going as they may (the run still waits). With "
                          "`remember` and `approve: true`, later calls of that tool are approved by "
                          "the grant (`approval_decided` `by: grant`)."),
    Operation("get", "/api/approvals/pending", "pendingApprovals", "Every approval the caller has open",
              "approvals", {200: Reply("The tool calls the caller's waiting runs ask about, oldest first.",
                                       OpenApprovalList)}, _PRIVATE),
    Operation("get", "/api/approvals/grants", "listGrants", "The caller's standing approvals", "approvals",
              {200: Reply("Oldest first.", GrantList)}, _PRIVATE),
    Operation("delete", "/api/approvals/grants/{grant_id}", "revokeGrant", "Revoke a standing approval",
              "approvals", {204: Reply("Revoked: that tool asks again.")}, (401, 404, 503)),
    Operation("post", "/api/mcp/servers", "addMcpServer", "Add one of your own MCP servers", "tools",
              {201: Reply("Added: its tools are the caller's, and only the caller's.", McpServerView)},
              (400, 401, 409, 413, 422, 429, 503), body=McpServerBody,
              description="409: a server of that name (the caller's, or one the service offers); 422: a "
                          "bad name, URL or header, or a URL that reaches a loopback, private or "
                          "link-local address; 429: the caller has as many servers as they may."),
    Operation("get", "/api/mcp/servers", "listMcpServers", "Your own MCP servers", "tools",
              {200: Reply("Oldest first; header values are never returned.", McpServerList)}, _PRIVATE),
    Operation("delete", "/api/mcp/servers/{name}", "removeMcpServer", "Remove one of your MCP servers",
              "tools", {204: Reply("Removed, with its tools.")}, (401, 404, 503)),
    Operation("get", "/api/tools", "listTools", "The tools your agent can use", "tools",
              {200: Reply("Builtin, the service's MCP servers', your own MCP servers'.", ToolList)},
              _PRIVATE),
    Operation("get", "/api/threads", "listThreads", "The caller's threads, a page at a time", "threads",
              {200: Reply("Most recently updated first.", ThreadList)}, (400, 401, 404, 503),
              query={"q": (Annotated[str, Field(max_length=200)], "Only threads whose title or messages "
                           "hold this text (case-insensitive)."),
                     "cursor": (Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,512}$")],
                                "`next_cursor` of the page before (404 when it is not one)."),
                     "limit": (Annotated[str, Field(pattern=r"^(?:[1-9][0-9]?|1[0-9]{2}|200)$")],
                               "Threads per page, 1 to 200 (default 100).")}),
    Operation("patch", "/api/threads/{thread_id}", "renameThread", "Rename a thread", "threads",
              {200: Reply("The thread, renamed.", ThreadView)}, (400, 401, 404, 413, 422, 503),
              body=ThreadRenameBody),
    Operation("post", "/api/threads/{thread_id}/fork", "forkThread",
              "Fork a thread at one of your messages (to edit it and send it again)", "threads",
              {201: Reply("A new thread with the history before that message, and the message.", ForkResult)},
              (400, 401, 404, 413, 422, 503), body=ForkBody,
              description="Then send the edited message as a chat in the new thread."),
    Operation("get", "/api/threads/{thread_id}/timeline", "threadTimeline",
              "A thread as it was seen live: messages, runs and their events", "threads",
              {200: Reply("A page of messages, oldest first, from the end of the thread; each user's "
                          "message with its run and every event of it.", TimelinePage)},
              (400, 401, 404, 503),
              query={"before": (Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,512}$")],
                                "`before` of the page after this one (404 when it is not one)."),
                     "limit": (Annotated[str, Field(pattern=r"^(?:[1-9][0-9]?|1[0-9]{2}|200)$")],
                               "Messages per page, 1 to 200 (default 50).")}),
    Operation("get", "/api/threads/{thread_id}/messages", "threadMessages", "A thread's messages",
              "threads", {200: Reply("Oldest first.", MessageList)}, (401, 404, 503)),
    Operation("delete", "/api/threads/{thread_id}", "deleteThread", "Delete a thread", "threads",
              {204: Reply("Deleted, with its messages and runs.")}, (401, 404, 409, 503),
              description="409 while the thread has a run going: cancel it first."),
    Operation("post", "/api/agui", "aguiRun", "Run the agent for an AG-UI client", "agui",
              {200: Reply("The run as AG-UI events (the schema is that of each event).", AguiEventMessage,
                          EVENT_STREAM)},
              (400, 401, 409, 413, 422, 429, 503), body=AguiInput,
              description="The body is an AG-UI `RunAgentInput` (camelCase); see docs/ag-ui.md."),
    Operation("get", "/health", "health", "Liveness", "operations",
              {200: Reply("The process answers.", Health)}, public=True),
    Operation("get", "/ready", "ready", "Readiness", "operations",
              {200: Reply("Ready for requests.", Readiness),
               503: Reply("Starting or draining: the error form (server_not_ready) and the state.",
                          NotReady)},
              public=True),
    Operation("get", "/metrics", "metrics", "Prometheus metrics", "operations",
              {200: Reply("The Prometheus text format.", media_type="text/plain")}, public=True,
              description="Unauthenticated, for scraping on an internal network."),
    Operation("get", "/api/openapi.json", "openapi", "This document", "operations",
              {200: Reply("The OpenAPI 3.1 document of this API.", OpenApiDocument)}, public=True),
)


def _error_model(status: int) -> type[BaseModel]:
    """{"error": {"code", "message"}} with `code` limited to the codes of this status."""
    codes = tuple(sorted(code for code, known in STATUS_BY_CODE.items() if known == status))
    detail = create_model(f"ErrorDetail{status}", __base__=ErrorDetail, code=(Literal[codes], ...))
    return create_model(f"Error{status}", __base__=ErrorBody, __doc__=f"An error answered with {status}.",
                        error=(detail, ...))


def _string_schema(annotation: Any) -> dict[str, Any]:
    return TypeAdapter(annotation).json_schema(ref_template=REF)


def _path_parameters(path: str) -> list[dict[str, Any]]:
    schema = _string_schema(Annotated[str, Field(pattern=ID_PATTERN)])
    return [{"name": name, "in": "path", "required": True, "schema": schema}
            for name in re.findall(r"\{(\w+)\}", path)]


def _content(reply: Reply, refs: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any] | None:
    if reply.model is not None:
        return {reply.media_type or JSON: {"schema": refs[reply.model]}}
    if reply.media_type is not None:
        return {reply.media_type: {"schema": _string_schema(str)}}
    return None


def _operation(op: Operation, refs: dict[type[BaseModel], dict[str, Any]],
               errors: dict[int, type[BaseModel]]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, reply in sorted(op.replies.items()):
        responses[str(status)] = {"description": reply.description}
        if (content := _content(reply, refs)) is not None:
            responses[str(status)]["content"] = content
    for status in op.errors:
        codes = ", ".join(sorted(c for c, known in STATUS_BY_CODE.items() if known == status))
        responses[str(status)] = {"description": f"{ERROR_MEANINGS[status]} Codes: {codes}.",
                                  "content": {JSON: {"schema": refs[errors[status]]}}}
        if status in ERROR_HEADERS:
            responses[str(status)]["headers"] = {
                name: {"description": text, "schema": _string_schema(str)}
                for name, text in ERROR_HEADERS[status].items()
            }
    document: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        document["description"] = op.description
    parameters = _path_parameters(op.path) + [
        {"name": name, "in": place, "required": False, "description": text,
         "schema": _string_schema(annotation)}
        for place, named in (("header", op.headers), ("query", op.query))
        for name, (annotation, text) in named.items()
    ]
    if parameters:
        document["parameters"] = parameters
    if op.body is not None:
        document["requestBody"] = {"required": True, "content": {JSON: {"schema": refs[op.body]}}}
    document["responses"] = responses
    if op.public:
        document["security"] = []
    return document


def _discriminators_required(node: Any) -> None:
    """A tagged union's tag is required: pydantic leaves it out of `required` when each member has it as
    a default (AG-UI's `role` and `type`), yet it cannot tell the members apart without it (422)."""
    if isinstance(node, dict):
        if isinstance(tag := node.get("discriminator", {}).get("propertyName"), str):
            node.update(type="object", required=sorted({*node.get("required", []), tag}))
        for value in node.values():
            _discriminators_required(value)
    elif isinstance(node, list):
        for value in node:
            _discriminators_required(value)


def _package_version() -> str:
    try:
        return version("goldenpath")
    except PackageNotFoundError:
        return "0"


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The whole document; built once, it depends on the code only."""
    errors = {status: _error_model(status) for status in sorted({s for op in OPERATIONS for s in op.errors})}
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for op in OPERATIONS:
        if op.body is not None:
            models.append((op.body, "validation"))
        models += [(reply.model, reply.mode) for reply in op.replies.values() if reply.model]
    models += [(model, "serialization") for model in errors.values()]
    unique = list(dict.fromkeys(models))
    by_key, definitions = models_json_schema(unique, ref_template=REF)
    refs = {model: by_key[(model, mode)] for model, mode in unique}
    schemas = definitions.get("$defs", {})
    describe_events(schemas, REF)
    _discriminators_required(schemas)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs, errors)
    return {
        "openapi": "3.1.0",
        "info": {"title": "goldenpath", "version": _package_version(), "description": DESCRIPTION,
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "tags": [{"name": name} for name in dict.fromkeys(op.tag for op in OPERATIONS)],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {BEARER: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                         "description": "The access_token of POST /api/auth/login."}},
        },
        "security": [{BEARER: []}],
    }


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
