"""The agent events of the wire protocol: one payload class per type, their table, and the stored event."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar

from domain.entities import RunStatus


class EventType(StrEnum):
    AGENT_STARTED = "agent_started"
    RUN_RESUMED = "run_resumed"
    AGENT_THINKING = "agent_thinking"
    APPROVAL_REQUIRED = "approval_required"
    APPROVAL_DECIDED = "approval_decided"
    TOOL_EXECUTING = "tool_executing"
    TOOL_COMPLETED = "tool_completed"
    AGENT_MESSAGE_DELTA = "agent_message_delta"
    AGENT_COMPLETED = "agent_completed"
    AGENT_ERROR = "agent_error"
    AGENT_CANCELLED = "agent_cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_EVENTS


class EventPayload:
    """What a run says with one event: its type, whether it ends the run, and its wire `data`.

    Subclasses are slotted dataclasses whose fields are the wire fields, each spelling its `data`
    out: a delta is on the hot path, and a generic `data` (getattr over the fields) or a frozen
    dataclass (its __init__ goes through object.__setattr__) each cost more than the rest of the
    payload together. A payload lives only until `emit` turns it into the event's data.
    """

    __slots__ = ()
    TYPE: ClassVar[EventType]
    TERMINAL: ClassVar[bool] = False

    def data(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(slots=True)
class AgentStarted(EventPayload):
    TYPE = EventType.AGENT_STARTED
    agent: str

    def data(self) -> dict[str, Any]:
        return {"agent": self.agent}


@dataclass(slots=True)
class RunResumed(EventPayload):
    """Another process took the run over and goes on from its last checkpoint.

    `from_seq`: the last event the checkpoint covers; what came after it (the text and thinking of
    a step cut off) is superseded and comes again. `text`: the answer as of that checkpoint.
    """

    TYPE = EventType.RUN_RESUMED
    attempt: int
    from_seq: int
    text: str

    def data(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "from_seq": self.from_seq, "text": self.text}


@dataclass(slots=True)
class AgentThinking(EventPayload):
    TYPE = EventType.AGENT_THINKING
    text: str

    def data(self) -> dict[str, Any]:
        return {"text": self.text}


@dataclass(slots=True)
class ApprovalRequired(EventPayload):
    """The run waits for a person to approve this tool call: its status becomes `waiting` (stored
    with this event) and it holds no engine until the decision, or `expires_at`, comes."""

    TYPE = EventType.APPROVAL_REQUIRED
    tool_call_id: str
    tool: str
    arguments: Any
    expires_at: str  # ISO-8601 UTC

    def data(self) -> dict[str, Any]:
        return {"tool_call_id": self.tool_call_id, "tool": self.tool, "arguments": self.arguments,
                "expires_at": self.expires_at}


@dataclass(slots=True)
class ApprovalDecided(EventPayload):
    """`by`: "user" (a person answered), "grant" (a standing yes answered) or "timeout"."""

    TYPE = EventType.APPROVAL_DECIDED
    tool_call_id: str
    approved: bool
    by: str
    reason: str | None = None

    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"tool_call_id": self.tool_call_id, "approved": self.approved, "by": self.by}
        if self.reason is not None:
            data["reason"] = self.reason
        return data


@dataclass(slots=True)
class ToolExecuting(EventPayload):
    TYPE = EventType.TOOL_EXECUTING
    tool_call_id: str
    tool: str
    arguments: Any  # the parsed JSON, or the model's text when it is not JSON

    def data(self) -> dict[str, Any]:
        return {"tool_call_id": self.tool_call_id, "tool": self.tool, "arguments": self.arguments}


@dataclass(slots=True)
class ToolCompleted(EventPayload):
    """`result` when the tool succeeded (even a None one), `error` instead when it failed: never both."""

    TYPE = EventType.TOOL_COMPLETED
    tool_call_id: str
    tool: str
    duration_ms: int
    result: Any = None
    error: str | None = None

    def data(self) -> dict[str, Any]:
        outcome = {"result": self.result} if self.error is None else {"error": self.error}
        return {"tool_call_id": self.tool_call_id, "tool": self.tool, **outcome,
                "duration_ms": self.duration_ms}


@dataclass(slots=True)
class AgentMessageDelta(EventPayload):
    TYPE = EventType.AGENT_MESSAGE_DELTA
    delta: str

    def data(self) -> dict[str, Any]:
        return {"delta": self.delta}


@dataclass(slots=True)
class AgentCompleted(EventPayload):
    TYPE = EventType.AGENT_COMPLETED
    TERMINAL = True
    message_id: str | None
    text: str
    usage: Mapping[str, int]

    def data(self) -> dict[str, Any]:
        return {"message_id": self.message_id, "text": self.text, "usage": self.usage}


@dataclass(slots=True)
class AgentError(EventPayload):
    TYPE = EventType.AGENT_ERROR
    TERMINAL = True
    code: str
    message: str

    def data(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


@dataclass(slots=True)
class AgentCancelled(EventPayload):
    TYPE = EventType.AGENT_CANCELLED
    TERMINAL = True
    reason: str

    def data(self) -> dict[str, Any]:
        return {"reason": self.reason}


# THE vocabulary: docs/protocol.md, the OpenAPI document and the AG-UI translation are checked
# against it (tests/architecture/test_event_vocabulary.py).
PAYLOADS: Mapping[EventType, type[EventPayload]] = MappingProxyType({
    payload.TYPE: payload for payload in (
        AgentStarted, RunResumed, AgentThinking, ApprovalRequired, ApprovalDecided, ToolExecuting,
        ToolCompleted, AgentMessageDelta,
        AgentCompleted, AgentError, AgentCancelled,
    )
})

TERMINAL_EVENTS = frozenset(type_ for type_, payload in PAYLOADS.items() if payload.TERMINAL)

# The status a run's terminal event gives it, stored in the same transaction as the event.
FINAL_STATUS: Mapping[EventType, RunStatus] = MappingProxyType({
    EventType.AGENT_COMPLETED: RunStatus.COMPLETED,
    EventType.AGENT_ERROR: RunStatus.FAILED,
    EventType.AGENT_CANCELLED: RunStatus.CANCELLED,
})


def run_end(event: AgentEvent) -> tuple[RunStatus, str | None]:
    """The final status a terminal event writes on its run, and its `error`: agent_error's code
    or agent_cancelled's reason (what a program can act on; the message is in the event)."""
    error = event.data.get("code") if event.type is EventType.AGENT_ERROR else event.data.get("reason")
    return FINAL_STATUS[event.type], error


@dataclass(slots=True)
class AgentEvent:
    """One event of one run; `cursor` is set by the event log when it is stored.

    `data` is a plain mapping: stored events come back from the database in wire form.
    """

    type: EventType
    user_id: str
    run_id: str
    thread_id: str
    seq: int
    ts: datetime
    data: Mapping[str, Any]
    cursor: str | None = None
    # The lease epoch its writer held: the log refuses it once the run's epoch has moved on.
    # None: not fenced (an event written outside a run's lease, as tests do).
    epoch: int | None = None
    # The run's state after this event (domain/checkpoints.py), stored in the event's transaction;
    # never sent to clients.
    checkpoint: Mapping[str, Any] | None = None

    def with_cursor(self, cursor: str) -> AgentEvent:
        return replace(self, cursor=cursor)

    def to_wire(self) -> dict[str, Any]:
        """The server frame of PROTOCOL.md; the user id stays on the server."""
        return {
            "type": self.type.value,
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "seq": self.seq,
            "cursor": self.cursor,
            "ts": self.ts.isoformat().replace("+00:00", "Z"),
            "data": dict(self.data),
        }
