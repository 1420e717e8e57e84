"""POST /api/agui: a run started and streamed in the AG-UI protocol (docs/ag-ui.md).

The body is an AG-UI `RunAgentInput`; the answer is the run's events translated to AG-UI events
and encoded as Server-Sent Events by the ag-ui-protocol package. The run itself is an ordinary
goldenpath run (ChatService.submit), so it also reaches the user's sockets, its events are kept,
and it goes on if the HTTP client goes away.
"""

from __future__ import annotations

import contextlib
import json
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
from domain.errors import NotFound
from entrypoints.agui_translate import AguiTranslator
from entrypoints.appkeys import SETTINGS, USER, Services, services
from entrypoints.errors import ApiError
from entrypoints.http.bodies import read_body
from entrypoints.http.schemas import AguiInput
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
        events = follow(self._stream, self._stored, Position(), run_id=self._run_id, idle_s=self._keepalive_s)
        async with contextlib.aclosing(events):
            async for envelope in events:
                if envelope is not None:
                    await self.write(self._translator.feed(json.loads(envelope.frame)))
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
