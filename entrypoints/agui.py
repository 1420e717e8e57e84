"""POST /api/agui: a run started and streamed in the AG-UI protocol (docs/ag-ui.md).

The body is an AG-UI `RunAgentInput`; the answer is the run's events translated to AG-UI events
and encoded as Server-Sent Events by the ag-ui-protocol package. The run itself is an ordinary
goldenpath run (ChatService.submit), so it also reaches the user's sockets, its events are kept,
and it goes on if the HTTP client goes away.

A run that asks for an approval ends its AG-UI run with the interrupt outcome; the AG-UI run that
answers it (`resume`) decides (ApprovalService.decide) and streams the same goldenpath run on,
from the question.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ag_ui.core import (
    BaseEvent,
    RunAgentInput,
    TextPart,
    UserMessage,
)
from ag_ui.encoder import EventEncoder
from aiohttp import web
from loguru import logger

from adapters.bridge import envelope_of
from adapters.event_bus import Envelope
from adapters.follow import Position, follow
from domain.chat import Submission
from domain.errors import Conflict, NotFound
from domain.events import AgentEvent, EventType
from entrypoints.agui_translate import AguiTranslator
from entrypoints.appkeys import SETTINGS, USER, Services, services
from entrypoints.errors import ApiError
from entrypoints.http.bodies import read_body
from entrypoints.http.schemas import AguiInput, AguiResolved, AguiResumeEntry
from entrypoints.middlewares import request_id_of
from entrypoints.run_stream import RunEventStream

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


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


async def _new_run(found: Services, request: web.Request, body: RunAgentInput, text: str,
                   stream: RunEventStream) -> AguiTranslator:
    run = (await _submit(found, request, body, text)).run
    stream.run_id = run.id
    return AguiTranslator(thread_id=run.thread_id, run_id=body.run_id, our_run_id=run.id,
                          new_thread=run.thread_id != body.thread_id,
                          started_at=int(run.created_at.timestamp() * 1000))


# -- interrupts: a run waiting for its user's approval -----------------------------------------------

# How many of a thread's latest runs a resume looks through for an interrupt no longer open (a
# retried resume, or one decided elsewhere): AG-UI resumes the most recent interrupted run.
RESUME_LOOKBACK_RUNS = 10


@dataclass(frozen=True, slots=True)
class _Asked:
    """Where a run asked about a tool call, and its decision if there was one."""

    run_id: str
    asked: AgentEvent
    decided: AgentEvent | None


def _asked_in(run_id: str, events: list[AgentEvent], tool_call_id: str) -> _Asked | None:
    def about(event: AgentEvent, kind: EventType) -> bool:
        return event.type is kind and event.data.get("tool_call_id") == tool_call_id

    asked = next((e for e in reversed(events) if about(e, EventType.APPROVAL_REQUIRED)), None)
    if asked is None:
        return None
    decided = next((e for e in events if e.seq > asked.seq and about(e, EventType.APPROVAL_DECIDED)), None)
    return _Asked(run_id, asked, decided)


async def _asked_by(found: Services, user_id: str, run_id: str, tool_call_id: str) -> _Asked | None:
    try:
        events = await found.conversations.run_events(user_id, run_id)
    except NotFound:
        return None
    return _asked_in(run_id, events, tool_call_id)


async def _find_asked(found: Services, user_id: str, thread_id: str, tool_call_id: str,
                      first: str | None) -> _Asked | None:
    """The run of the caller's thread that asked about the call: `first` (the run waiting on it) if
    given, else one of the thread's latest runs. None for another user's or an unknown thread."""
    if first is not None and (asked := await _asked_by(found, user_id, first, tool_call_id)) is not None:
        return asked
    try:
        messages = await found.conversations.messages(user_id, thread_id) if thread_id.strip() else []
    except NotFound:
        return None
    latest: list[str] = []
    for message in reversed(messages):
        if message.run_id and message.run_id != first and message.run_id not in latest:
            latest.append(message.run_id)
    for run_id in latest[:RESUME_LOOKBACK_RUNS]:
        if (asked := await _asked_by(found, user_id, run_id, tool_call_id)) is not None:
            return asked
    return None


async def _open_questions(found: Services, user_id: str, thread_id: str) -> list[dict[str, Any]]:
    if not thread_id.strip():
        return []
    return await found.approvals.waiting(user_id, thread_id)


async def _still_waiting(found: Services, user_id: str, body: RunAgentInput,
                         stream: RunEventStream) -> AguiTranslator | None:
    """A new message in a thread whose run waits for an approval: the message is not run, and this
    AG-UI run ends with the same interrupt again (AG-UI: an open interrupt blocks new input).
    None when nothing waits, or for a retry of the very run that asked (it replays as it was)."""
    for question in await _open_questions(found, user_id, body.thread_id):
        call_id = str(question["tool_call_id"])
        try:
            run = await found.conversations.run(user_id, str(question["run_id"]))
        except NotFound:
            continue
        if run.client_message_id == body.run_id:
            return None
        if (asked := await _asked_by(found, user_id, run.id, call_id)) is None:
            continue
        stream.run_id = run.id
        return AguiTranslator(thread_id=run.thread_id, run_id=body.run_id, our_run_id=run.id,
                              started_at=_now_ms(), after_seq=asked.asked.seq - 1, carried=[call_id],
                              meta={"pending": True})
    return None


def _decision(entry: AguiResumeEntry) -> tuple[bool, dict[str, Any]]:
    """(approve, the rest of decide's arguments): resolved says it in its payload; cancelled denies."""
    if isinstance(entry, AguiResolved):
        return entry.payload.approved, {"reason": entry.payload.reason, "remember": entry.payload.remember}
    return False, {}


def _refusal(asked: _Asked, approve: bool) -> Conflict | None:
    """Why an interrupt this request did not decide cannot be resumed; None if it was decided the
    same way, by the user (then its continuation is streamed again: a retried resume is safe)."""
    decided = asked.decided
    if decided is None:
        return Conflict("That interrupt can no longer be answered: its run has ended.")
    by, approved = decided.data.get("by"), decided.data.get("approved")
    if by == "user" and approved is approve:
        return None
    if by == "timeout":
        return Conflict("That interrupt expired unanswered; its run ended as cancelled.")
    return Conflict(f"That interrupt was answered already ({'approved' if approved else 'denied'}, by {by}).")


async def _resume(found: Services, user_id: str, body: RunAgentInput, entry: AguiResumeEntry,
                  stream: RunEventStream) -> AguiTranslator:
    """Answer the interrupt, then stream its run on from the question."""
    call_id = entry.interrupt_id
    approve, rest = _decision(entry)
    waiting = [q["run_id"] for q in await _open_questions(found, user_id, body.thread_id)
               if q["tool_call_id"] == call_id]
    asked = await _find_asked(found, user_id, body.thread_id, call_id, str(waiting[0]) if waiting else None)
    if asked is None:
        raise ApiError("conflict", f"No interrupt of this thread has the id {call_id!r}. Resume the "
                       "interrupt of the thread's last interrupted run, in that thread (its threadId).")
    stream.run_id = asked.run_id  # before the decision: the run's next event cannot slip past
    decided_here, refused = False, None
    if waiting and asked.decided is None:
        try:
            await found.approvals.decide(user_id, asked.run_id, call_id, approve=approve, **rest)
            decided_here = True
        except Conflict as exc:  # decided meanwhile, expired, or ended
            refused = exc
        except NotFound:  # gone meanwhile
            pass
        if not decided_here:  # as it stands now: a decision stored meanwhile
            asked = await _asked_by(found, user_id, asked.run_id, call_id) or asked
    if not decided_here and (why := _refusal(asked, approve)) is not None:
        raise refused if refused is not None and asked.decided is None else why
    return AguiTranslator(thread_id=asked.asked.thread_id, run_id=body.run_id, our_run_id=asked.run_id,
                          started_at=_now_ms(), after_seq=asked.asked.seq, carried=[call_id],
                          meta={"resumes": call_id})


# -- the handler -------------------------------------------------------------------------------------


class _Pump:
    """Writes one run's events to the response as `follow` gives them: the log first, then live."""

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
        self._final_seen = False

    async def write(self, events: list[BaseEvent]) -> None:
        if events:
            await self._response.write("".join(map(self._encoder.encode, events)).encode())

    async def _stored(self, at: Position) -> list[Envelope]:
        stored = await self._found.conversations.run_events(self._user_id, self._run_id, at.seq(self._run_id))
        return [envelope_of(event) for event in stored]

    async def run(self) -> None:
        start = Position({self._run_id: self._translator.after_seq})
        events = follow(self._stream, self._stored, start, run_id=self._run_id, idle_s=self._keepalive_s)
        async with contextlib.aclosing(events):
            async for envelope in events:
                if envelope is not None:
                    await self.write(self._translator.feed(json.loads(envelope.frame)))
                    if self._translator.finished:  # a terminal, or an interrupt: the run waits
                        return
                    continue
                await self._response.write(b": keepalive\n\n")
                if await self._ended_without_terminal():
                    return

    async def _ended_without_terminal(self) -> bool:
        """Idle, and the log has nothing more (follow read it again): a run final for two idle periods
        with no terminal event lost it (pruned), so the stream ends from the run's status."""
        run = await self._found.conversations.run(self._user_id, self._run_id)
        if run.status.is_final and self._final_seen:
            await self.write(self._translator.from_run(run))
            return True
        self._final_seen = run.status.is_final
        return False


async def agui_run(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, AguiInput, invalid_code="validation_error")
    text = None if body.resume else _user_text(body)  # a resume answers; its messages are not run
    found = services(request.app)
    user_id = request[USER].id
    server = request.app[SETTINGS].server
    stream = RunEventStream(user_id, server.ws_send_queue, prefix="agui")
    found.bridge.register(stream)  # before submitting or deciding: the run's next event cannot slip past
    try:
        if text is None:
            translator = await _resume(found, user_id, body, body.resume[0], stream)
        else:
            translator = await _still_waiting(found, user_id, body, stream) \
                or await _new_run(found, request, body, text, stream)
        run_id = translator.our_run_id
        response = web.StreamResponse(headers={"Content-Type": EventEncoder().get_content_type(),
                                               "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no",
                                               "X-Request-ID": request_id_of(request)})
        await response.prepare(request)
        pump = _Pump(found, user_id, run_id, stream, translator, response, server.sse_keepalive_s)
        try:
            await pump.write([translator.started()])
            await pump.run()
        except ConnectionResetError:
            logger.info("AG-UI client of run {} went away; the run goes on", run_id)
        except Exception:
            logger.exception("AG-UI stream of run {} failed", run_id)
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
