"""The HTTP API's bodies as pydantic models: the requests handlers read, the responses the OpenAPI shows."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Annotated, Any, Literal

from ag_ui.core import (
    ActivityMessage,
    AssistantMessage,
    ContentPart,
    DeveloperMessage,
    ReasoningMessage,
    ResumeEntry,
    RunAgentInput,
    SystemMessage,
    ToolMessage,
    UserMessage,
)
from ag_ui.core import Event as AguiEvent
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Json, StrictBool, StrictStr
from pydantic.json_schema import SkipJsonSchema

from container.settings import AuthSettings
from domain.approval_policy import Remember
from domain.auth import USERNAME_PATTERN, PasswordPolicy
from domain.entities import Role, RunStatus
from domain.events import EventType
from domain.lanes import Multitask
from entrypoints.fields import (
    MAX_ID_CHARS,
    MAX_REASON_CHARS,
    NOT_BLANK,
    Id,
    MessageText,
    message_rules,
)

# The ids this server gives out, as the OpenAPI document shows its path parameters.
ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.:\-]{{0,{MAX_ID_CHARS - 1}}}$"


# The domain's password rules (domain/auth.py), with the settings' default minimum; the domain enforces
# them (422), the schema shows them. "Three distinct characters" is the negation of "at most two".
NEW_PASSWORD_RULES: dict[str, Any] = {
    "minLength": AuthSettings.model_fields["min_password_length"].default,
    "maxLength": next(each.default for each in fields(PasswordPolicy) if each.name == "max_length"),
    "not": {"pattern": r"^([\s\S])\1*(?:([\s\S])(?:\1|\2)*)?$"},
}
_NEW_PASSWORD = (f"{NEW_PASSWORD_RULES['minLength']} to {NEW_PASSWORD_RULES['maxLength']} characters, "
                 "at least 3 distinct, not the username.")


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _absent_or(description: str) -> Any:
    """A field the server leaves out rather than sending null (the schema says only its type)."""
    return Field(None, description=description, json_schema_extra=_no_default)

# -- requests -----------------------------------------------------------------------------------------


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: StrictStr = Field(max_length=64)
    password: StrictStr = Field(max_length=1024)


class Registration(Credentials):
    """What registration takes; the handler reads Credentials and the domain enforces these rules (422)."""

    username: StrictStr = Field(
        pattern=USERNAME_PATTERN,
        description="3 to 32 letters, digits, '.', '_' or '-', starting with a letter or digit.",
    )
    password: StrictStr = Field(description=_NEW_PASSWORD, json_schema_extra=NEW_PASSWORD_RULES)


class ChatMessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: MessageText
    thread_id: Id | None = None
    client_message_id: Id | None = None
    multitask: Multitask = Multitask.ENQUEUE
    wait: StrictBool = False


def _user_content(schema: dict[str, Any]) -> None:
    """The text a run is given: a message's rules for plain text, a text part not blank for parts."""
    for branch in schema["anyOf"]:
        if branch["type"] == "string":
            branch.update(message_rules())
        else:
            branch["contains"] = {"type": "object", "required": ["type", "text"], "properties": {
                "type": {"const": "text"}, "text": {"type": "string", "pattern": NOT_BLANK}}}


class AguiUserMessage(UserMessage):
    """A user message with text to run: the schema shows it; the handler and the domain refuse the rest."""

    content: str | list[ContentPart] = Field(json_schema_extra=_user_content)


def _messages(schema: dict[str, Any]) -> None:
    """One of the messages is the user's."""
    schema["contains"] = {"type": "object", "required": ["role"], "properties": {"role": {"const": "user"}}}


AguiMessage = Annotated[DeveloperMessage | SystemMessage | AssistantMessage | AguiUserMessage | ToolMessage
                        | ActivityMessage | ReasoningMessage, Field(discriminator="role")]


class AguiApprovalAnswer(BaseModel):
    """A resolved resume entry's payload: the answer to one of this server's interrupts, a tool call
    waiting for its user's approval (the interrupt's responseSchema says the same)."""

    model_config = ConfigDict(extra="forbid")

    approved: StrictBool = Field(description="true runs the tool call, false denies it.")
    reason: Annotated[StrictStr, Field(max_length=MAX_REASON_CHARS)] | SkipJsonSchema[None] = _absent_or(
        "Why, for the record (approval_decided.reason).")
    remember: Remember | SkipJsonSchema[None] = _absent_or(
        "With approved true: answer yes for this tool from now on, in this thread ('thread') or "
        "everywhere ('always').")


class AguiResolved(ResumeEntry):
    """The user answered the interrupt."""

    interrupt_id: Id = Field(description="The interrupt's id: the tool call's id.")
    status: Literal["resolved"]
    payload: AguiApprovalAnswer


class AguiCancelled(ResumeEntry):
    """The user abandoned the interrupt: the tool call is denied."""

    interrupt_id: Id = Field(description="The interrupt's id: the tool call's id.")
    status: Literal["cancelled"]
    payload: Any = Field(None, description="Not read.")


AguiResumeEntry = Annotated[AguiResolved | AguiCancelled, Field(discriminator="status")]


def _none_is_empty(value: Any) -> Any:
    return [] if value is None else value


class AguiInput(RunAgentInput):
    """An AG-UI RunAgentInput as this server runs it: runId is the run's client_message_id, and the last
    user message's text is the message (the schema asks every user message for text: simpler, and the
    last one then has some). With `resume`, the run it answers goes on instead; messages are not read."""

    messages: list[AguiMessage] = Field(json_schema_extra=_messages)
    resume: Annotated[list[AguiResumeEntry], BeforeValidator(_none_is_empty)] = Field(
        default_factory=list, max_length=1, json_schema_extra=_no_default,
        description="The answer to the interrupt the thread's run waits on (one at a time). Absent, null "
                    "or empty: the last user message runs.")

    thread_id: str = Field(max_length=MAX_ID_CHARS, description="Empty, unknown or another user's: a new "
                           "thread.")
    run_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, pattern=NOT_BLANK,
                        description="A retried request with the same runId gets the same run.")


class PasswordChangeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: StrictStr = Field(max_length=1024)
    new_password: StrictStr = Field(max_length=1024, description=_NEW_PASSWORD,
                                    json_schema_extra=NEW_PASSWORD_RULES)


# -- responses ----------------------------------------------------------------------------------------


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserView(_Reply):
    user_id: str
    username: str


class TokenView(_Reply):
    access_token: str
    token_type: Literal["bearer"]
    expires_in: int = Field(description="Seconds until the token expires.")


class ChatAccepted(_Reply):
    run_id: str
    thread_id: str


class EventFrame(_Reply):
    """One agent event, as on the WebSocket; `data` depends on `type` (docs/protocol.md)."""

    type: EventType
    run_id: str
    thread_id: str
    seq: int = Field(ge=1)
    cursor: str
    ts: datetime
    data: dict[str, Any]


class RunEventMessage(_Reply):
    """One Server-Sent Event of GET /api/runs/{run_id}/events (the stream also carries comments)."""

    id: str = Field(pattern=r"^[0-9]+$", description="The event's seq, for Last-Event-ID.")
    event: EventType
    data: Json[EventFrame]


class AguiEventMessage(_Reply):
    """One Server-Sent Event of POST /api/agui: an AG-UI event, camelCase, in `data`."""

    event: Literal["message"] | SkipJsonSchema[None] = _absent_or("Not sent: every event is a 'message'.")
    data: Json[AguiEvent]


class ChatResult(_Reply):
    run_id: str
    thread_id: str
    status: RunStatus
    answer: str | None = Field(description="The final answer; null when the run did not complete.")
    events: list[EventFrame]


class PendingApproval(_Reply):
    tool_call_id: str
    tool: str
    arguments: Any
    expires_at: datetime
    seq: int = Field(description="The seq of the run's approval_required event.")


class RunView(_Reply):
    run_id: str
    thread_id: str
    status: RunStatus
    created_at: datetime
    finished_at: datetime | SkipJsonSchema[None] = _absent_or("Absent until the run ends.")
    error: str | SkipJsonSchema[None] = _absent_or("Present when the run failed.")
    pending_approvals: list[PendingApproval] | SkipJsonSchema[None] = _absent_or(
        "Present while the run is waiting: the tool call it asks its user to approve.")


class RunCancel(_Reply):
    run_id: str
    status: RunStatus


class ThreadView(_Reply):
    thread_id: str
    title: str
    updated_at: datetime


class ThreadList(_Reply):
    threads: list[ThreadView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: the last page.")


class ThreadRenameBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: StrictStr = Field(min_length=1, max_length=200, pattern=NOT_BLANK)


class ForkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message_id: Id = Field(description="A user message of the thread: the fork holds what came before it.")


class MessageView(_Reply):
    message_id: str
    role: Role
    text: str
    run_id: str | SkipJsonSchema[None] = _absent_or("The run that wrote or answered it.")
    created_at: datetime


class MessageList(_Reply):
    messages: list[MessageView]


class ForkResult(_Reply):
    thread: ThreadView
    message: MessageView = Field(description="The message forked at: edit it and send it in the new thread.")


class TimelineRun(RunView):
    events: list[EventFrame] = Field(description="Every event of the run, in seq order.")


class TimelineItem(_Reply):
    message: MessageView
    run: TimelineRun | SkipJsonSchema[None] = _absent_or("With a user's message: its run and its events.")


class TimelinePage(_Reply):
    items: list[TimelineItem] = Field(description="Oldest first.")
    before: str | None = Field(description="Pass as `before` for the page of older messages; null: none.")


class Health(_Reply):
    status: Literal["ok"]


class Readiness(_Reply):
    status: Literal["ready"]


class ErrorDetail(_Reply):
    code: str
    message: str = Field(description="A sentence a person can act on.")


class ErrorBody(_Reply):
    error: ErrorDetail


class NotReady(_Reply):
    status: Literal["starting", "draining"]
    error: ErrorDetail


class OpenApiDocument(BaseModel):
    model_config = ConfigDict(extra="allow")

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]
