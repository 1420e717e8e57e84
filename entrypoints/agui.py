"""POST /api/agui: a run started and streamed in the AG-UI protocol (docs/ag-ui.md).

The body is an AG-UI `RunAgentInput`; the answer is the run's events translated to AG-UI events
and encoded as Server-Sent Events by the ag-ui-protocol package. The run itself is an ordinary
goldenpath run (ChatService.submit), so it also reaches the user's sockets, its events are kept,
and it goes on if the HTTP client goes away.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ag_ui.core import (
    PROTOCOL_VERSION,
    BaseEvent,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TextPart,
    TokenUsage,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
    UserMessage,
)
from ag_ui.encoder import EventEncoder
from aiohttp import web
from loguru import logger

from domain.chat import Submission
from domain.errors import NotFound
from domain.model import Run, RunStatus
from entrypoints.appkeys import SETTINGS, USER, Services, services
from entrypoints.errors import ApiError
from entrypoints.http.bodies import read_body
from entrypoints.middlewares import request_id_of
from entrypoints.run_stream import RunEventStream

MAX_ID_CHARS = 128
META = "goldenpath"  # our key in an event's metadata ("ag-ui" is reserved for the protocol)


# -- the request ------------------------------------------------------------------------------------


def _user_text(body: RunAgentInput) -> str:
    """The text of the last user message: its content string, or its text parts joined by newlines."""
    last = next((m for m in reversed(body.messages) if isinstance(m, UserMessage)), None)
    if last is None:
        raise ApiError("validation_error", "'messages' must hold a message with role 'user' to run.")
    if isinstance(last.content, str):
        return last.content
    texts = [part.text for part in last.content if isinstance(part, TextPart)]
    if not texts:
        raise ApiError("validation_error", "The last user message has no text part; send its text.")
    return "\n".join(texts)


def _check_ids(body: RunAgentInput) -> None:
    if not body.run_id.strip() or len(body.run_id) > MAX_ID_CHARS:
        raise ApiError("validation_error", f"'runId' must be 1 to {MAX_ID_CHARS} characters.")
    if len(body.thread_id) > MAX_ID_CHARS:
        raise ApiError("validation_error", f"'threadId' must be at most {MAX_ID_CHARS} characters.")


async def _submit(found: Services, request: web.Request, body: RunAgentInput, text: str) -> Submission:
    """Continue the caller's thread named by threadId, or start a new one when it names none of theirs.

    runId is the client_message_id, so a retried POST gets the run of the first one.
    """
    fields: dict[str, Any] = {"user_id": request[USER].id, "text": text,
                              "request_id": request_id_of(request), "client_message_id": body.run_id}
    if not body.thread_id.strip():  # an empty threadId asks for a new thread
        return await found.chat.submit(thread_id=None, **fields)
    try:
        return await found.chat.submit(thread_id=body.thread_id, **fields)
    except NotFound:  # unknown, deleted or another user's thread: never disclosed, never joined
        return await found.chat.submit(thread_id=None, **fields)


# -- following one run on the bridge -----------------------------------------------------------------


# -- goldenpath events to AG-UI events ---------------------------------------------------------------


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
    """

    def __init__(self, *, thread_id: str, run_id: str, our_run_id: str, new_thread: bool = False,
                 started_at: int | None = None) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self._our_run_id = our_run_id
        self._new_thread = new_thread
        self._started_at = started_at
        self._counter = itertools.count(1)
        self._span: str | None = None
        self._span_messages = 0
        self._reasoning: str | None = None
        self._text: str | None = None
        self._assistant: str | None = None
        self._assistant_has_text = False
        self._after_results = False
        self._calls: set[str] = set()
        self.finished = False

    def _new_id(self, kind: str) -> str:
        return f"{self._our_run_id}-{kind}{next(self._counter)}"

    def started(self) -> RunStartedEvent:
        return RunStartedEvent(thread_id=self.thread_id, run_id=self.run_id, timestamp=self._started_at,
                               protocol_version=PROTOCOL_VERSION,
                               metadata={META: {"runId": self._our_run_id, "newThread": self._new_thread}})

    def feed(self, event: Mapping[str, Any]) -> list[BaseEvent]:
        """The AG-UI events for one goldenpath event; nothing once the run has finished."""
        if self.finished:
            return []
        kind = event.get("type")
        data = event.get("data") or {}
        ts = _millis(event.get("ts"))
        handler = {
            "agent_thinking": self._thinking,
            "agent_message_delta": self._delta,
            "tool_executing": self._tool_executing,
            "tool_completed": self._tool_completed,
            "agent_completed": self._completed,
            "agent_error": self._error,
            "agent_cancelled": self._cancelled,
        }.get(str(kind))
        if handler is None:  # agent_started (RUN_STARTED went first), or a type added later
            return []
        out = handler(data)
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
        out = self._close_all()
        call_id, name = str(data.get("tool_call_id") or ""), str(data.get("tool") or "")
        if not call_id or not name or call_id in self._calls:
            return out
        if self._assistant is None:
            self._assistant = self._new_id("m")
        self._calls.add(call_id)
        arguments = data.get("arguments")
        delta = arguments if isinstance(arguments, str) else _json(arguments if arguments is not None else {})
        out.append(ToolCallStartEvent(tool_call_id=call_id, tool_call_name=name,
                                      parent_message_id=self._assistant))
        if delta:
            out.append(ToolCallArgsEvent(tool_call_id=call_id, delta=delta))
        out.append(ToolCallEndEvent(tool_call_id=call_id))
        return out

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


# -- the handler -------------------------------------------------------------------------------------


class _Pump:
    """Writes one run's events to the response: the log first, then live, filling gaps from the log."""

    def __init__(self, found: Services, user_id: str, run_id: str, stream: RunEventStream,
                 translator: AguiTranslator, response: web.StreamResponse, keepalive_s: float) -> None:
        self._found = found
        self._keepalive_s = keepalive_s
        self._user_id = user_id
        self._run_id = run_id
        self._stream = stream
        self._translator = translator
        self._response = response
        self._encoder = EventEncoder()
        self._last = 0

    async def write(self, events: list[BaseEvent]) -> None:
        if events:
            await self._response.write("".join(map(self._encoder.encode, events)).encode())

    async def _take(self, event: Mapping[str, Any]) -> None:
        self._last = int(event["seq"])
        await self.write(self._translator.feed(event))

    async def _catch_up(self) -> None:
        for stored in await self._found.conversations.run_events(self._user_id, self._run_id, self._last):
            if self._translator.finished:
                return
            if stored.seq > self._last:
                await self._take(stored.to_wire())

    async def run(self) -> None:
        await self._catch_up()
        final_seen = False
        while not self._translator.finished:
            if self._stream.overflowed:
                self._stream.restart()
                await self._catch_up()
                continue
            try:
                async with asyncio.timeout(self._keepalive_s):
                    envelope = await self._stream.queue.get()
            except TimeoutError:
                await self._response.write(b": keepalive\n\n")
                final_seen = await self._idle(final_seen)
                continue
            if envelope.run_id != self._run_id or envelope.seq <= self._last:
                continue
            if envelope.seq > self._last + 1:
                await self._catch_up()
                if envelope.seq <= self._last:
                    continue
            await self._take(json.loads(envelope.frame))

    async def _idle(self, final_seen: bool) -> bool:
        """Nothing came for a while: read the log (live events can be lost while a bus is down); a run
        final for two idle periods with no terminal event in the log lost it (pruned): end from its status."""
        await self._catch_up()
        if self._translator.finished:
            return True
        run = await self._found.conversations.run(self._user_id, self._run_id)
        if not run.status.is_final:
            return False
        if final_seen:
            await self.write(self._translator.from_run(run))
        return True


async def agui_run(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, RunAgentInput, invalid_code="validation_error")
    _check_ids(body)
    text = _user_text(body)
    found = services(request.app)
    user_id = request[USER].id
    server = request.app[SETTINGS].server
    stream = RunEventStream(user_id, server.ws_send_queue, prefix="agui")
    found.bridge.register(stream)  # before submitting: the run's first event cannot slip past
    try:
        run = (await _submit(found, request, body, text)).run
        stream.run_id = run.id
        response = web.StreamResponse(headers={"Content-Type": EventEncoder().get_content_type(),
                                               "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no",
                                               "X-Request-ID": request_id_of(request)})
        await response.prepare(request)
        translator = AguiTranslator(thread_id=run.thread_id, run_id=body.run_id, our_run_id=run.id,
                                    new_thread=run.thread_id != body.thread_id,
                                    started_at=int(run.created_at.timestamp() * 1000))
        pump = _Pump(found, user_id, run.id, stream, translator, response, server.sse_keepalive_s)
        try:
            await pump.write([translator.started()])
            await pump.run()
        except ConnectionResetError:
            logger.info("AG-UI client of run {} went away; the run goes on", run.id)
        except Exception:
            logger.exception("AG-UI stream of run {} failed", run.id)
            await _fail_stream(pump, translator)
        return response
    finally:
        found.bridge.unregister(stream)


async def _fail_stream(pump: _Pump, translator: AguiTranslator) -> None:
    """The response has started, so an error body is impossible: end the AG-UI stream properly."""
    try:
        await pump.write(translator.stream_failed())
    except Exception:
        logger.debug("could not end the AG-UI stream")
