"""AG-UI translation: one goldenpath run's events (wire form) as AG-UI events (docs/ag-ui.md)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from ag_ui.core import (
    PROTOCOL_VERSION,
    BaseEvent,
    CustomEvent,
    Interrupt,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunFinishedInterruptOutcome,
    RunStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TokenUsage,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)

from domain.approval_policy import Remember
from domain.entities import Run, RunStatus
from domain.events import EventType
from entrypoints.fields import MAX_REASON_CHARS

META = "goldenpath"  # our key in an event's metadata ("ag-ui" is reserved for the protocol)

# The interrupt of a tool call waiting for approval: AG-UI's core reason for an interrupt bound to a
# tool call, and the answer a resolved resume entry carries (entrypoints/http/schemas.py,
# AguiApprovalAnswer, reads it).
INTERRUPT_REASON = "tool_call"
APPROVAL_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "approved": {"type": "boolean"},
        "reason": {"type": "string", "maxLength": MAX_REASON_CHARS},
        "remember": {"enum": [each.value for each in Remember]},
    },
    "required": ["approved"],
    "additionalProperties": False,
}


def _millis(ts: object) -> int | None:
    if not isinstance(ts, str):
        return None
    try:
        return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


class AguiTranslator:
    """Turns one run's goldenpath events (wire form) into AG-UI events, in the order the spec wants.

    - Every agent_thinking opens a reasoning span if none is open. The first one of a span (the
      agent's status line) is a reasoning message of its own; the ones that follow it (the model's
      reasoning, streamed) go into one second message.
    - Text and reasoning are never open at once: each closes the other, and both close before a
      tool call and before the terminal event.
    - The assistant message that holds a turn's text also parents its tool calls; a turn ends with
      the tool results (the next text or thinking starts a new assistant message).
    - approval_required ends the AG-UI run: its tool call, then RUN_FINISHED with the interrupt
      outcome. The AG-UI run that answers it continues the same goldenpath run from that event
      (`after_seq`): the tool call is `carried` (started in the interrupted run, so it is not
      started again; its result comes against it), and its ids are minted apart from the first's.
    """

    def __init__(self, *, thread_id: str, run_id: str, our_run_id: str, new_thread: bool = False,
                 started_at: int | None = None, after_seq: int = 0, carried: Iterable[str] = (),
                 meta: Mapping[str, Any] | None = None) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self._our_run_id = our_run_id
        self._new_thread = new_thread
        self._started_at = started_at
        self.after_seq = after_seq
        self._ids = our_run_id if after_seq == 0 else f"{our_run_id}-s{after_seq}"
        self._meta = dict(meta or {})
        self._counter = itertools.count(1)
        self._span: str | None = None
        self._span_messages = 0
        self._reasoning: str | None = None
        self._text: str | None = None
        self._assistant: str | None = None
        self._assistant_has_text = False
        self._after_results = False
        self._calls: set[str] = set(carried)
        self.finished = False

    @property
    def our_run_id(self) -> str:
        return self._our_run_id

    def _new_id(self, kind: str) -> str:
        return f"{self._ids}-{kind}{next(self._counter)}"

    def started(self) -> RunStartedEvent:
        meta = {"runId": self._our_run_id, "newThread": self._new_thread, **self._meta}
        return RunStartedEvent(thread_id=self.thread_id, run_id=self.run_id, timestamp=self._started_at,
                               protocol_version=PROTOCOL_VERSION, metadata={META: meta})

    def feed(self, event: Mapping[str, Any]) -> list[BaseEvent]:
        """The AG-UI events for one goldenpath event; nothing once the run has finished."""
        if self.finished:
            return []
        kind = event.get("type")
        data = event.get("data") or {}
        ts = _millis(event.get("ts"))
        handler = HANDLERS.get(str(kind))
        if handler is None:  # a type this server no longer emits, in a stored run
            return []
        out = handler(self, data)
        for item in out:
            item.timestamp = ts
        return out

    # -- open things and closing them ------------------------------------------------------------

    def _next_turn_if_due(self) -> None:
        if self._after_results:
            self._assistant, self._assistant_has_text, self._after_results = None, False, False

    def _close_reasoning(self) -> list[BaseEvent]:
        out: list[BaseEvent] = []
        if self._reasoning is not None:
            out.append(ReasoningMessageEndEvent(message_id=self._reasoning))
            self._reasoning = None
        if self._span is not None:
            out.append(ReasoningEndEvent(message_id=self._span))
            self._span, self._span_messages = None, 0
        return out

    def _close_text(self) -> list[BaseEvent]:
        if self._text is None:
            return []
        ended = TextMessageEndEvent(message_id=self._text)
        self._text = None
        return [ended]

    def _close_all(self) -> list[BaseEvent]:
        return self._close_reasoning() + self._close_text()

    # -- each goldenpath event -------------------------------------------------------------------

    def _started(self, data: Mapping[str, Any]) -> list[BaseEvent]:
        return []  # RUN_STARTED went first, from `started`

    def _resumed(self, data: Mapping[str, Any]) -> list[BaseEvent]:
        # AG-UI cannot take streamed text back: what the cut-off step said stays in its message,
        # the step's text comes again in a new one, and RUN_FINISHED's result.text is the answer.
        out = self._close_all()
        self._assistant, self._assistant_has_text = None, False
        out.append(CustomEvent(name="goldenpath.run_resumed", value=dict(data)))
        return out

    def _thinking(self, data: Mapping[str, Any]) -> list[BaseEvent]:
        self._next_turn_if_due()
        out = self._close_text()
        text = data.get("text")
        if not isinstance(text, str) or not text:
            return out
        if self._span is None:
            self._span = self._new_id("r")
            out.append(ReasoningStartEvent(message_id=self._span))
        if self._span_messages == 0:  # the status line: a message of its own
            status = self._new_id("r")
            out += [ReasoningMessageStartEvent(message_id=status),
                    ReasoningMessageContentEvent(message_id=status, delta=text),
                    ReasoningMessageEndEvent(message_id=status)]
            self._span_messages = 1
            return out
        if self._reasoning is None:
            self._reasoning = self._new_id("r")
            out.append(ReasoningMessageStartEvent(message_id=self._reasoning))
            self._span_messages += 1
        out.append(ReasoningMessageContentEvent(message_id=self._reasoning, delta=text))
        return out

    def _delta(self, data: Mapping[str, Any]) -> list[BaseEvent]:
        self._next_turn_if_due()
        out = self._close_reasoning()
        delta = data.get("delta")
        if not isinstance(delta, str) or not delta:  # never an empty delta: AG-UI before 1.0 forbade them
            return out
        if self._text is None:
            if self._assistant is None or self._assistant_has_text:
                self._assistant = self._new_id("m")
            self._text, self._assistant_has_text = self._assistant, True
            out.append(TextMessageStartEvent(message_id=self._text, role="assistant"))
        out.append(TextMessageContentEvent(message_id=self._text, delta=delta))
        return out

    def _tool_executing(self, data: Mapping[str, Any]) -> list[BaseEvent]:
        return self._close_all() + self._tool_call(data)

    def _tool_call(self, data: Mapping[str, Any]) -> list[BaseEvent]:
        """The call's start, arguments and end, once: not again for a call started already (in
        this AG-UI run, or, carried, in the one its approval interrupted)."""
        call_id, name = str(data.get("tool_call_id") or ""), str(data.get("tool") or "")
        if not call_id or not name or call_id in self._calls:
            return []
        if self._assistant is None:
            self._assistant = self._new_id("m")
        self._calls.add(call_id)
        arguments = data.get("arguments")
        delta = arguments if isinstance(arguments, str) else _json(arguments if arguments is not None else {})
        out: list[BaseEvent] = [ToolCallStartEvent(tool_call_id=call_id, tool_call_name=name,
                                                   parent_message_id=self._assistant)]
        if delta:
            out.append(ToolCallArgsEvent(tool_call_id=call_id, delta=delta))
        out.append(ToolCallEndEvent(tool_call_id=call_id))
        return out

    def _approval_required(self, data: Mapping[str, Any]) -> list[BaseEvent]:
        """The run waits for its user: the AG-UI run ends here, interrupted; a new one answers it."""
        out = self._close_all() + self._tool_call(data)
        call_id, tool = str(data.get("tool_call_id") or ""), str(data.get("tool") or "")
        if not call_id:
            return out
        arguments = data.get("arguments")
        shown = "" if arguments in (None, {}, "") else f" with {_json(arguments)}"
        expires_at = data.get("expires_at")
        interrupt = Interrupt(id=call_id, reason=INTERRUPT_REASON, message=f"Approve {tool}{shown}?",
                              tool_call_id=call_id, response_schema=APPROVAL_ANSWER_SCHEMA,
                              expires_at=expires_at if isinstance(expires_at, str) else None,
                              metadata={META: {"tool": tool, "arguments": arguments}})
        meta = {META: {"runId": self._our_run_id}}
        return out + self._terminal(RunFinishedEvent(
            thread_id=self.thread_id, run_id=self.run_id,
            outcome=RunFinishedInterruptOutcome(interrupts=[interrupt]), metadata=meta))

    def _approval_decided(self, data: Mapping[str, Any]) -> list[BaseEvent]:
        return [CustomEvent(name="goldenpath.approval_decided", value=dict(data))]

    def _tool_completed(self, data: Mapping[str, Any]) -> list[BaseEvent]:
        out = self._close_all()
        call_id = str(data.get("tool_call_id") or "")
        if call_id not in self._calls:  # a result for a call never started would break the stream
            return out
        content = _json({"error": data["error"]} if "error" in data else {"result": data.get("result")})
        out.append(ToolCallResultEvent(message_id=self._new_id("t"), tool_call_id=call_id,
                                       content=content, role="tool"))
        self._after_results = True
        return out

    def _terminal(self, event: BaseEvent) -> list[BaseEvent]:
        self.finished = True
        return [*self._close_all(), event]

    def _completed(self, data: Mapping[str, Any]) -> list[BaseEvent]:
        usage = data.get("usage") or {}
        tokens: list[TokenUsage] | None = None
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        if prompt or completion:
            tokens = [TokenUsage(input_tokens=prompt, output_tokens=completion,
                                 total_tokens=prompt + completion)]
        meta = {META: {"runId": self._our_run_id, "messageId": data.get("message_id")}}
        return self._terminal(RunFinishedEvent(
            thread_id=self.thread_id, run_id=self.run_id,
            result={"text": data.get("text", ""), "usage": dict(usage)}, usage=tokens, metadata=meta))

    def _error(self, data: Mapping[str, Any]) -> list[BaseEvent]:
        message = data.get("message") or "The run failed."
        return self._terminal(RunErrorEvent(message=str(message), code=data.get("code") or "error",
                                            metadata={META: {"runId": self._our_run_id}}))

    def _cancelled(self, data: Mapping[str, Any]) -> list[BaseEvent]:
        meta = {META: {"runId": self._our_run_id, "reason": data.get("reason")}}
        return self._terminal(RunFinishedEvent(thread_id=self.thread_id, run_id=self.run_id,
                                               outcome=RunFinishedCancelledOutcome(), metadata=meta))

    def from_run(self, run: Run) -> list[BaseEvent]:
        """A terminal made from the run's final status, for a run whose terminal event is gone
        (pruned after the retention period, for a very late retry of the same runId)."""
        meta = {META: {"runId": self._our_run_id}}
        if run.status is RunStatus.FAILED:
            terminal: BaseEvent = RunErrorEvent(message=run.error or "The run failed.", code="run_failed",
                                                metadata=meta)
        elif run.status is RunStatus.CANCELLED:
            terminal = RunFinishedEvent(thread_id=self.thread_id, run_id=self.run_id,
                                        outcome=RunFinishedCancelledOutcome(), metadata=meta)
        else:
            terminal = RunFinishedEvent(thread_id=self.thread_id, run_id=self.run_id, metadata=meta)
        return self._terminal(terminal)

    def stream_failed(self) -> list[BaseEvent]:
        """This stream broke (not the run): close what is open and end it with RUN_ERROR."""
        if self.finished:
            return []
        return self._terminal(RunErrorEvent(
            message="The event stream failed; the run goes on. Read its outcome with GET /api/runs/{id}.",
            code="stream_failed", metadata={META: {"runId": self._our_run_id}}))


# Every goldenpath event type and what AG-UI makes of it (tests/architecture/test_event_vocabulary.py
# checks that each type of domain/events.py has its entry).
HANDLERS: Mapping[str, Callable[[AguiTranslator, Mapping[str, Any]], list[BaseEvent]]] = {
    EventType.AGENT_STARTED: AguiTranslator._started,
    EventType.RUN_RESUMED: AguiTranslator._resumed,
    EventType.AGENT_THINKING: AguiTranslator._thinking,
    EventType.AGENT_MESSAGE_DELTA: AguiTranslator._delta,
    EventType.APPROVAL_REQUIRED: AguiTranslator._approval_required,
    EventType.APPROVAL_DECIDED: AguiTranslator._approval_decided,
    EventType.TOOL_EXECUTING: AguiTranslator._tool_executing,
    EventType.TOOL_COMPLETED: AguiTranslator._tool_completed,
    EventType.AGENT_COMPLETED: AguiTranslator._completed,
    EventType.AGENT_ERROR: AguiTranslator._error,
    EventType.AGENT_CANCELLED: AguiTranslator._cancelled,
}
