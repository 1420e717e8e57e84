"""The OpenAPI document's agent events: the `data` of each event type, and EventFrame tied to it."""

from __future__ import annotations

import copy
from typing import Any

_STRING: dict[str, Any] = {"type": "string"}
_INTEGER: dict[str, Any] = {"type": "integer", "minimum": 0}
_ANY_JSON: dict[str, Any] = {}


def _data(description: str, properties: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": properties,
            "required": list(properties), "additionalProperties": False, **more}


# By hand, not derived from domain/events.py: a document derived from the code could never disagree
# with it, and tests/architecture/test_event_vocabulary.py compares the two.
EVENT_DATA: dict[str, dict[str, Any]] = {
    "agent_started": _data("The first event of every run.", {"agent": _STRING}),
    "run_resumed": _data("The run's process stopped and another took it over: it goes on from its "
                         "last checkpoint. Events after `from_seq` (the text of a step cut off) are "
                         "superseded and come again; `text` is the answer as of the checkpoint; "
                         "`attempt` counts the takeovers.",
                         {"attempt": _INTEGER, "from_seq": _INTEGER, "text": _STRING}),
    "agent_thinking": _data("What the agent is doing, or the model's reasoning as it streams.",
                            {"text": _STRING}),
    "approval_required": _data("The run waits for its user to approve this tool call (status "
                               "`waiting`, holding no engine) until a decision or `expires_at`.",
                               {"tool_call_id": _STRING, "tool": _STRING, "arguments": _ANY_JSON,
                                "expires_at": {"type": "string", "format": "date-time"}}),
    "approval_decided": {
        **_data("The decision on an approval: by the user, a standing grant, or the timeout "
                "(then the run ends agent_cancelled, reason approval_timeout).",
                {"tool_call_id": _STRING, "approved": {"type": "boolean"},
                 "by": {"type": "string", "enum": ["user", "grant", "timeout"]}, "reason": _STRING}),
        "required": ["tool_call_id", "approved", "by"],
    },
    "tool_executing": _data("Before a tool runs; `arguments` as the model gave them (a string when "
                            "they are not JSON).",
                            {"tool_call_id": _STRING, "tool": _STRING, "arguments": _ANY_JSON}),
    "tool_completed": {
        **_data("After a tool ran: `result` when it succeeded, `error` when it failed, never both.",
                {"tool_call_id": _STRING, "tool": _STRING, "result": _ANY_JSON, "error": _STRING,
                 "duration_ms": _INTEGER}),
        "required": ["tool_call_id", "tool", "duration_ms"],
        "oneOf": [{"required": ["result"]}, {"required": ["error"]}],
    },
    "agent_message_delta": _data("A piece of the answer as it streams.", {"delta": _STRING}),
    "agent_completed": _data("Terminal: the whole answer, and what the run used.", {
        "message_id": {"type": ["string", "null"]},
        "text": _STRING,
        "usage": {"type": "object", "additionalProperties": _INTEGER,
                  "description": "Model calls, tokens where the model reports them, tool calls, "
                                 "duration_ms."},
    }),
    "agent_error": _data("Terminal: the run failed.", {"code": _STRING, "message": _STRING}),
    "agent_cancelled": _data("Terminal: cancelled by the user, a timeout or a shutdown.",
                             {"reason": _STRING}),
}


def _event_data_name(event_type: str) -> str:
    return "".join(word.title() for word in event_type.split("_")) + "Data"


def describe_events(schemas: dict[str, Any], ref: str) -> None:
    """Ties each event frame's `data` to its `type`: one branch of EventFrame per event type."""
    for event_type, data in EVENT_DATA.items():
        schemas[_event_data_name(event_type)] = copy.deepcopy(data)  # a document shares no dicts
    schemas["EventFrame"]["oneOf"] = [
        {"properties": {"type": {"const": event_type},
                        "data": {"$ref": ref.format(model=_event_data_name(event_type))}}}
        for event_type in EVENT_DATA
    ]
