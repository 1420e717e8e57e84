"""Event payloads give the wire form of docs/protocol.md."""

from __future__ import annotations

from domain.events import AgentCompleted, AgentMessageDelta, EventType, ToolCompleted


def test_a_tool_that_succeeded_gives_its_result_and_no_error() -> None:
    data = ToolCompleted(tool_call_id="call_1", tool="calculator", duration_ms=3, result=None).data()
    assert data == {"tool_call_id": "call_1", "tool": "calculator", "result": None, "duration_ms": 3}


def test_a_tool_that_failed_gives_its_error_and_no_result() -> None:
    data = ToolCompleted(tool_call_id="call_1", tool="calculator", duration_ms=3, error="bad input").data()
    assert data == {"tool_call_id": "call_1", "tool": "calculator", "error": "bad input", "duration_ms": 3}


def test_a_payload_knows_its_type_and_whether_it_ends_the_run() -> None:
    assert AgentMessageDelta("hi").TYPE is EventType.AGENT_MESSAGE_DELTA
    assert not AgentMessageDelta.TERMINAL and not EventType.AGENT_MESSAGE_DELTA.is_terminal
    assert AgentCompleted.TERMINAL and EventType.AGENT_COMPLETED.is_terminal
