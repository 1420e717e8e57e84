"""The agent events of the wire protocol: their types and the event one run emits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    AGENT_STARTED = "agent_started"
    AGENT_THINKING = "agent_thinking"
    TOOL_EXECUTING = "tool_executing"
    TOOL_COMPLETED = "tool_completed"
    AGENT_MESSAGE_DELTA = "agent_message_delta"
    AGENT_COMPLETED = "agent_completed"
    AGENT_ERROR = "agent_error"
    AGENT_CANCELLED = "agent_cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_EVENTS


TERMINAL_EVENTS = frozenset(
    {EventType.AGENT_COMPLETED, EventType.AGENT_ERROR, EventType.AGENT_CANCELLED}
)


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One event of one run; `cursor` is set by the event log when it is stored."""

    type: EventType
    user_id: str
    run_id: str
    thread_id: str
    seq: int
    ts: datetime
    data: Mapping[str, Any]
    cursor: str | None = None

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
