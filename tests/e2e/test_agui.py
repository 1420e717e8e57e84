"""POST /api/agui from outside: a real HTTP client, every event checked against the ag-ui-protocol models."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from ag_ui.core import BaseEvent, Event, EventType
from dependency_injector import providers
from pydantic import TypeAdapter

from adapters.bridge import AgentWebSocketBridge
from adapters.event_bus import Envelope
from container import Container
from domain.conversations import ConversationService
from domain.errors import ModelError
from entrypoints.appkeys import services
from entrypoints.run_stream import RunEventStream
from tests.e2e.client import Server, User, register
from tests.fakes import ScriptedModel, answer
from tests.helpers import eventually
from tests.overrides import replace_model

EVENT = TypeAdapter(Event)
TERMINALS = {EventType.RUN_FINISHED, EventType.RUN_ERROR}


def run_input(text: str | None = "What is 17 * 23?", *, thread_id: str | None = None,
              run_id: str | None = None, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    messages = list(history or [])
    if text is not None:
        messages.append({"id": f"u_{secrets.token_hex(4)}", "role": "user", "content": text})
    return {"threadId": f"client-thread-{secrets.token_hex(4)}" if thread_id is None else thread_id,
            "runId": run_id or f"client-run-{secrets.token_hex(4)}",
            "messages": messages, "tools": [], "context": [], "state": {}, "forwardedProps": {}}


def parse_sse(body: str) -> list[BaseEvent]:
    """Every `data:` line, validated by the protocol's own models (the discriminated Event union)."""
    events = []
    for block in body.split("\n\n"):
        data = [line[len("data: "):] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            events.append(EVENT.validate_json("\n".join(data)))
    return events


async def post_agui(user: User | None, body: Any, *, server: Server | None = None,
                    raw: bytes | None = None) -> tuple[int, str, Any]:
    """(status, content type, events) for a stream, (status, content type, JSON) for an error."""
    target = (server or user.server).base_url + "/api/agui"  # type: ignore[union-attr]
    headers = user.auth if user else {}
    payload: dict[str, Any] = {"data": raw, "headers": {**headers, "Content-Type": "application/json"}} \
        if raw is not None else {"json": body, "headers": headers}
    async with aiohttp.ClientSession() as session, session.post(
        target, timeout=aiohttp.ClientTimeout(total=30), **payload
    ) as response:
        text = await response.text()
        if response.content_type == "text/event-stream":
            return response.status, response.content_type, parse_sse(text)
        return response.status, response.content_type, json.loads(text)


def assert_valid_order(events: list[BaseEvent], carried: frozenset[str] = frozenset()) -> None:
    """The AG-UI sequencing rules, checked on the whole stream. `carried`: tool calls started in the
    run this one resumes (their results come against them; they are not started again)."""
    assert events, "no events"
    assert events[0].type is EventType.RUN_STARTED
    terminals = [e for e in events if e.type in TERMINALS]
    assert len(terminals) == 1 and events[-1] is terminals[0], [e.type for e in events]
    thread_id, run_id = events[0].thread_id, events[0].run_id
    if events[-1].type is EventType.RUN_FINISHED:
        assert (events[-1].thread_id, events[-1].run_id) == (thread_id, run_id)
    text_open: set[str] = set()
    text_done: set[str] = set()
    reasoning_open: set[str] = set()
    reasoning_done: set[str] = set()
    spans_open: set[str] = set()
    calls: dict[str, str] = dict.fromkeys(carried, "ended")  # tool call id -> started, args, ended, result
    for event in events[1:-1]:
        kind = event.type
        if kind is EventType.TEXT_MESSAGE_START:
            assert event.message_id not in text_open | text_done
            assert event.role in (None, "assistant")
            text_open.add(event.message_id)
        elif kind is EventType.TEXT_MESSAGE_CONTENT:
            assert event.message_id in text_open and event.delta
        elif kind is EventType.TEXT_MESSAGE_END:
            assert event.message_id in text_open
            text_open.remove(event.message_id)
            text_done.add(event.message_id)
        elif kind is EventType.REASONING_START:
            assert not spans_open and event.message_id not in reasoning_done
            spans_open.add(event.message_id)
        elif kind is EventType.REASONING_MESSAGE_START:
            assert spans_open and event.message_id not in reasoning_open | reasoning_done
            reasoning_open.add(event.message_id)
        elif kind is EventType.REASONING_MESSAGE_CONTENT:
            assert event.message_id in reasoning_open and event.delta
        elif kind is EventType.REASONING_MESSAGE_END:
            assert event.message_id in reasoning_open
            reasoning_open.remove(event.message_id)
            reasoning_done.add(event.message_id)
        elif kind is EventType.REASONING_END:
            assert event.message_id in spans_open and not reasoning_open
            spans_open.remove(event.message_id)
            reasoning_done.add(event.message_id)
        elif kind is EventType.TOOL_CALL_START:
            assert event.tool_call_id not in calls and event.tool_call_name and event.parent_message_id
            calls[event.tool_call_id] = "started"
        elif kind is EventType.TOOL_CALL_ARGS:
            assert calls.get(event.tool_call_id) in {"started", "args"} and event.delta
            calls[event.tool_call_id] = "args"
        elif kind is EventType.TOOL_CALL_END:
            assert calls.get(event.tool_call_id) in {"started", "args"}
            calls[event.tool_call_id] = "ended"
        elif kind is EventType.TOOL_CALL_RESULT:
            assert calls.get(event.tool_call_id) == "ended" and event.role == "tool"
            calls[event.tool_call_id] = "result"
        elif kind is EventType.CUSTOM:
            assert event.name.startswith("goldenpath.")
        else:
            raise AssertionError(f"unexpected event {kind}")
    # Everything started was ended before the terminal event.
    assert not text_open and not reasoning_open and not spans_open
    assert all(state in {"ended", "result"} for state in calls.values())


def answer_text(events: list[BaseEvent]) -> str:
    return "".join(e.delta for e in events if e.type is EventType.TEXT_MESSAGE_CONTENT)


async def test_a_run_streams_valid_ag_ui_events_and_continues_its_thread(server: Server) -> None:
    user = await register(server)
    first = run_input("What is 17 * 23?")
    status, content_type, events = await post_agui(user, first)
    assert status == 200 and content_type == "text/event-stream"
    assert_valid_order(events)
    types = [e.type for e in events]
    started, finished = events[0], events[-1]
    assert finished.type is EventType.RUN_FINISHED and finished.outcome is None
    assert started.run_id == first["runId"] and started.protocol_version
    thread_id = started.thread_id
    assert thread_id != first["threadId"]  # unknown to the server: a new thread, which the client adopts
    assert started.metadata["goldenpath"]["newThread"] is True

    order = [types.index(t) for t in (EventType.REASONING_START, EventType.TOOL_CALL_START,
                                      EventType.TOOL_CALL_ARGS, EventType.TOOL_CALL_END,
                                      EventType.TOOL_CALL_RESULT, EventType.TEXT_MESSAGE_START,
                                      EventType.TEXT_MESSAGE_CONTENT, EventType.TEXT_MESSAGE_END)]
    assert order == sorted(order), types
    start = next(e for e in events if e.type is EventType.TOOL_CALL_START)
    assert start.tool_call_name == "calculator"
    args = "".join(e.delta for e in events if e.type is EventType.TOOL_CALL_ARGS)
    assert "17" in json.loads(args)["expression"]
    result = next(e for e in events if e.type is EventType.TOOL_CALL_RESULT)
    assert json.loads(result.content)["result"]["value"] == 391
    assert result.message_id != start.parent_message_id
    text = answer_text(events)
    assert "391" in text
    assert finished.result["text"] == text and finished.result["usage"]["tool_calls"] == 1
    assert finished.usage and finished.usage[0].total_tokens

    # The same threadId again: the thread goes on, with the server's history.
    history = [first["messages"][0], {"id": "a1", "role": "assistant", "content": text}]
    second = run_input("And what is 2 + 2?", thread_id=thread_id, history=history)
    status, _, events2 = await post_agui(user, second)
    assert status == 200
    assert_valid_order(events2)
    assert events2[0].thread_id == thread_id and events2[0].metadata["goldenpath"]["newThread"] is False
    assert events2[-1].type is EventType.RUN_FINISHED and "4" in answer_text(events2)

    status, body = await user.http("GET", f"/api/threads/{thread_id}/messages")
    assert status == 200
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"] * 2
    assert body["messages"][0]["text"] == "What is 17 * 23?"
    assert body["messages"][2]["text"] == "And what is 2 + 2?"


async def test_a_retried_post_with_the_same_run_id_replays_the_one_run(server: Server) -> None:
    user = await register(server)
    body = run_input("What is 17 * 23?")
    _, _, events = await post_agui(user, body)
    _, _, again = await post_agui(user, body)
    assert_valid_order(again)
    ours = events[0].metadata["goldenpath"]["runId"]
    assert again[0].metadata["goldenpath"]["runId"] == ours and again[0].thread_id == events[0].thread_id
    assert answer_text(again) == answer_text(events)
    status, history = await user.http("GET", f"/api/threads/{events[0].thread_id}/messages")
    assert status == 200 and len(history["messages"]) == 2


async def test_text_parts_are_joined_and_the_last_user_message_runs(server: Server) -> None:
    user = await register(server)
    body = run_input(None, thread_id="", history=[
        {"id": "u1", "role": "user", "content": "What is 1 + 1?"},
        {"id": "a1", "role": "assistant", "content": "2"},
        {"id": "u2", "role": "user", "content": [{"type": "text", "text": "What is"},
                                                  {"type": "text", "text": "17 * 23?"}]},
    ])
    status, _, events = await post_agui(user, body)
    assert status == 200
    assert_valid_order(events)
    assert "391" in answer_text(events)
    _, history = await user.http("GET", f"/api/threads/{events[0].thread_id}/messages")
    assert history["messages"][0]["text"] == "What is\n17 * 23?"


async def test_a_model_failure_ends_with_run_error(make_server) -> None:
    model = ScriptedModel(ModelError("The model service answered 503; try again later.",
                                     code="model_unavailable"))
    server: Server = await make_server(replace_model(model))
    user = await register(server)
    status, _, events = await post_agui(user, run_input("hello"))
    assert status == 200
    assert_valid_order(events)
    error = events[-1]
    assert error.type is EventType.RUN_ERROR and error.code == "model_unavailable"
    assert "503" in error.message


async def test_a_cancelled_run_finishes_with_the_cancelled_outcome(make_server) -> None:
    server: Server = await make_server(replace_model(ScriptedModel(
        answer("one two three four five six seven eight nine ten"), pause_s=0.3)))
    user = await register(server)
    target = server.base_url + "/api/agui"
    async with aiohttp.ClientSession() as session, session.post(
        target, json=run_input("count"), headers=user.auth, timeout=aiohttp.ClientTimeout(total=30)
    ) as response:
        assert response.status == 200
        seen = ""
        run_id = None
        async for line in response.content:
            seen += line.decode()
            if run_id is None and seen.count("\n\n") >= 1:
                run_id = parse_sse(seen)[0].metadata["goldenpath"]["runId"]
            if "TEXT_MESSAGE_CONTENT" in seen and run_id is not None:
                break
        status, _ = await user.http("POST", f"/api/runs/{run_id}/cancel")
        assert status == 202
        seen += (await response.read()).decode()
    events = parse_sse(seen)
    assert_valid_order(events)
    assert events[-1].type is EventType.RUN_FINISHED and events[-1].outcome.type == "cancelled"
    types = [e.type for e in events]
    assert types.index(EventType.TEXT_MESSAGE_END) == len(types) - 2


async def test_the_run_goes_on_when_the_client_goes_away(make_server) -> None:
    server: Server = await make_server(replace_model(ScriptedModel(answer("slow and steady"), pause_s=0.2)))
    user = await register(server)
    async with aiohttp.ClientSession() as session, session.post(
        server.base_url + "/api/agui", json=run_input("go"), headers=user.auth
    ) as response:
        first = await response.content.readuntil(b"\n\n")
        run_id = parse_sse(first.decode())[0].metadata["goldenpath"]["runId"]
    # The connection is closed; the run is not.
    async def completed() -> bool:
        status, run = await user.http("GET", f"/api/runs/{run_id}")
        assert status == 200, run
        return run["status"] == "completed"

    await eventually(completed, what="the run completing without its client", interval=0.1)


async def test_bad_bodies_get_our_error_form(server: Server) -> None:
    user = await register(server)
    status, _, body = await post_agui(user, None, raw=b"{not json")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    for bad in ({"threadId": "t", "runId": "r"},                      # no messages
                {"threadId": "t", "runId": "r", "messages": [{"role": "user"}]},
                {"threadId": 5, "runId": "r", "messages": []},
                run_input(None, history=[{"id": "a", "role": "assistant", "content": "hi"}]),
                run_input(None, history=[{"id": "u", "role": "user", "content": [
                    {"type": "image", "source": {"type": "url", "value": "https://x/y.png"}}]}]),
                run_input("hi", run_id="r" * 200)):
        status, _, body = await post_agui(user, bad)
        assert status == 422, (bad, body)
        assert body["error"]["code"] == "validation_error" and body["error"]["message"]
    status, _, body = await post_agui(user, run_input("   "))
    assert status == 400 and body["error"]["code"] == "invalid_message"


async def test_no_token_is_unauthorized(server: Server) -> None:
    status, _, body = await post_agui(None, run_input(), server=server)
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_another_users_thread_id_starts_a_new_thread(server: Server) -> None:
    alice, mallory = await register(server), await register(server)
    _, _, events = await post_agui(alice, run_input("Remember that my locker code is 4417"))
    alices_thread = events[0].thread_id
    status, _, stolen = await post_agui(mallory, run_input("What is my locker code?",
                                                          thread_id=alices_thread))
    assert status == 200
    assert_valid_order(stolen)
    assert stolen[0].thread_id != alices_thread and stolen[0].metadata["goldenpath"]["newThread"] is True
    assert "4417" not in answer_text(stolen)
    status, history = await mallory.http("GET", f"/api/threads/{stolen[0].thread_id}/messages")
    assert status == 200 and len(history["messages"]) == 2
    assert all("4417" not in m["text"] for m in history["messages"])
    _, alices = await alice.http("GET", f"/api/threads/{alices_thread}/messages")
    assert len(alices["messages"]) == 2


class LossyBridge(AgentWebSocketBridge):
    """The one bridge, losing some of a run's live events on their way to AG-UI streams."""

    def __init__(self, *, loss: str, **parts: Any) -> None:
        super().__init__(**parts)
        self._loss = loss
        self.lost = 0

    def deliver(self, envelope: Envelope) -> None:
        for subscriber in self.connections_of(envelope.user_id):
            if isinstance(subscriber, RunEventStream) and subscriber.run_id is not None \
                    and self._lost(envelope):
                if self._loss == "overflow":
                    subscriber.overflowed = True  # what a full queue does
                self.lost += 1
                continue
            subscriber.deliver(envelope)

    def _lost(self, envelope: Envelope) -> bool:
        if self._loss in {"terminal", "pruned"}:
            return envelope.terminal
        return envelope.seq % 3 == 0 and not envelope.terminal


class TerminalPruned(ConversationService):
    """The run's terminal event gone from the log too, as retention would have it."""

    async def run_events(self, *args: Any, **kwargs: Any) -> list[Any]:
        return [e for e in await super().run_events(*args, **kwargs) if not e.type.is_terminal]


def losing(loss: str, model: Any) -> Callable[[Container], None]:
    def override(container: Container) -> None:
        replace_model(model)(container)
        container.bridge.override(providers.Singleton(
            LossyBridge, loss=loss, event_log=container.event_log, bus=container.event_bus))
        if loss == "pruned":
            container.conversation_service.override(providers.Singleton(
                TerminalPruned, threads=container.threads, messages=container.messages,
                runs=container.runs, events=container.event_log, ids=container.ids, clock=container.clock))

    return override


@pytest.mark.parametrize("loss", ["gap", "overflow", "terminal", "pruned"])
async def test_live_events_the_stream_missed_are_read_from_the_log(make_server, loss) -> None:
    """A live event lost (a gap in seq, a full queue, the terminal itself): the log fills in.
    The terminal gone from the log too (pruned): the stream ends from the run's final status."""
    words = " ".join(f"w{i}" for i in range(60))
    # A lost terminal is looked for at each idle tick: a short keepalive keeps the test short.
    server: Server = await make_server(losing(loss, ScriptedModel(answer(words), pause_s=0.01)),
                                       server={"sse_keepalive_s": 0.2})
    user = await register(server)
    status, _, events = await post_agui(user, run_input("go"))
    assert status == 200
    assert_valid_order(events)
    assert answer_text(events) == words and events[-1].type is EventType.RUN_FINISHED
    bridge = services(server.app).bridge
    assert isinstance(bridge, LossyBridge) and bridge.lost > 0  # the stream really missed events
    if loss == "pruned":
        assert events[-1].result is None and events[-1].outcome is None
    else:
        assert events[-1].result["text"] == words
