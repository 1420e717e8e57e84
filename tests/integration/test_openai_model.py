"""The openai adapter against a real local OpenAI-compatible HTTP server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from datetime import UTC, datetime

import pytest
from aiohttp import web

from adapters.models.openai_chat import OpenAIChatModel
from domain.agent import run_agent
from domain.checkpoints import RunState
from domain.context import UserExecutionContext
from domain.emitter import RunEventEmitter
from domain.errors import ModelError
from domain.events import AgentEvent, EventType
from domain.llm import (
    ChatMessage,
    ModelChunk,
    ModelRequest,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    UsageReport,
)
from domain.tools import builtin_tools
from tests.fakes import (
    FixedClock,
    InMemoryNoteRepository,
    SequentialIds,
    approval_gate,
    engine_limits,
    toolbox,
)
from tests.helpers import eventually
from tests.integration import fake_openai_server as reply
from tests.integration.fake_openai_server import FakeOpenAI

API_KEY = "sk-test-SECRET-7f3a9c"
NOW = datetime(2026, 11, 21, 14, 3, tzinfo=UTC)
HELLO = ModelRequest(messages=(ChatMessage(role="user", content="Hello"),))

MakeModel = Callable[..., OpenAIChatModel]


@pytest.fixture
def fake(fake_openai: FakeOpenAI) -> FakeOpenAI:
    return fake_openai


@pytest.fixture
async def make_model(fake: FakeOpenAI) -> AsyncIterator[MakeModel]:
    models: list[OpenAIChatModel] = []

    def make(**overrides: object) -> OpenAIChatModel:
        options: dict = {"base_url": fake.base_url, "api_key": API_KEY, "model": "test-model",
                         "timeout_s": 5.0, "max_retries": 2, "backoff_base_s": 0.001}
        model = OpenAIChatModel(**(options | overrides))
        models.append(model)
        return model

    yield make
    for model in models:
        await model.aclose()


async def collect(model: OpenAIChatModel, request: ModelRequest = HELLO) -> list[ModelChunk]:
    return [chunk async for chunk in model.stream(request)]


async def failure(model: OpenAIChatModel, request: ModelRequest = HELLO) -> ModelError:
    with pytest.raises(ModelError) as caught:
        await collect(model, request)
    assert API_KEY not in caught.value.message and API_KEY not in str(caught.value)
    return caught.value


async def test_streams_text_and_reports_usage(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.script(reply.text("Hel", "lo ", "there", usage=(21, 3)))
    model = make_model()
    chunks = await collect(model)
    assert [c.text for c in chunks if isinstance(c, TextDelta)] == ["Hel", "lo ", "there"]
    assert chunks[-1] == UsageReport(prompt_tokens=21, completion_tokens=3)
    assert model.name == "openai:test-model"
    [received] = fake.received
    assert received.authorization == f"Bearer {API_KEY}"
    assert received.body["model"] == "test-model"
    assert received.body["stream"] is True
    assert received.body["stream_options"] == {"include_usage": True}
    assert received.body["messages"] == [{"role": "user", "content": "Hello"}]
    assert "tools" not in received.body and "temperature" not in received.body


async def test_empty_key_sends_a_placeholder_and_temperature_is_passed(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(reply.text("ok"))
    await collect(make_model(api_key="", temperature=0.2))
    [received] = fake.received
    assert received.authorization == "Bearer not-needed"
    assert received.body["temperature"] == 0.2


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_deltas(fake: FakeOpenAI, make_model: MakeModel, field: str) -> None:
    fake.script(reply.reasoning(("Let me think", " about it."), "42", field=field))
    chunks = await collect(make_model())
    assert [c.text for c in chunks if isinstance(c, ReasoningDelta)] == ["Let me think", " about it."]
    assert [c.text for c in chunks if isinstance(c, TextDelta)] == ["42"]


async def test_tool_call_pieces_arrive_as_streamed(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.script(reply.tool_call("calculator", '{"expr', 'ession": "17', ' * 23"}', call_id="call_9"))
    calls = [c for c in await collect(make_model()) if isinstance(c, ToolCallDelta)]
    assert calls == [
        ToolCallDelta(index=0, id="call_9", name="calculator", arguments=""),
        ToolCallDelta(index=0, arguments='{"expr'),
        ToolCallDelta(index=0, arguments='ession": "17'),
        ToolCallDelta(index=0, arguments=' * 23"}'),
    ]


async def test_maps_messages_and_tools(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.script(reply.text("done"))
    call = ToolCall(id="call_1", name="calculator", arguments='{"expression": "2+2"}')
    spec = ToolSpec(name="calculator", description="Does arithmetic.",
                    parameters={"type": "object", "properties": {"expression": {"type": "string"}}})
    request = ModelRequest(
        messages=(
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="2+2?"),
            ChatMessage(role="assistant", tool_calls=(call,)),
            ChatMessage(role="tool", content='{"result": 4}', tool_call_id="call_1"),
            ChatMessage(role="assistant", content="4"),
        ),
        tools=(spec,),
    )
    await collect(make_model(), request)
    body = fake.received[0].body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"result": 4}'},
        {"role": "assistant", "content": "4"},
    ]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "calculator", "description": "Does arithmetic.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}}]


async def run_the_agent(model: OpenAIChatModel, question: str) -> tuple[str, list[AgentEvent], RunState]:
    """The agent loop with the builtin tools on `model`: its answer, the events it emitted, its state."""
    clock = FixedClock(NOW)
    tools = toolbox(builtin_tools(notes=InMemoryNoteRepository(), ids=SequentialIds(), clock=clock))
    context = UserExecutionContext(user_id="u_alice", thread_id="t_1", run_id="r_1",
                                   request_id="req_1", created_at=NOW)
    events: list[AgentEvent] = []

    async def publish(event: AgentEvent) -> AgentEvent:
        events.append(event)
        return event

    state = RunState(conversation=[ChatMessage(role="user", content=question)])
    emitter = RunEventEmitter(context, publish, clock)
    try:
        answer = await run_agent(context=context, model=model, toolbox=tools,
                                 emitter=emitter, state=state, limits=engine_limits(max_steps=4),
                                 gate=approval_gate())
    finally:
        await emitter.confirm()
    return answer, events, state


def streamed(events: list[AgentEvent]) -> str:
    return "".join(e.data["delta"] for e in events if e.type == EventType.AGENT_MESSAGE_DELTA)


async def test_the_agent_loop_calls_the_calculator_and_sends_back_its_result(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(reply.tool_call("calculator", '{"expression":', ' "17 * 23"}', call_id="call_calc"),
                reply.text("17 * 23 ", "is 391."))
    answer, events, state = await run_the_agent(make_model(), "What is 17 * 23?")

    assert answer == streamed(events) == "17 * 23 is 391."
    [completed] = [e for e in events if e.type == EventType.TOOL_COMPLETED]
    assert completed.data["tool"] == "calculator" and completed.data["result"]["value"] == 391
    assert state.usage.prompt_tokens == 24 and state.usage.completion_tokens == 14
    first, second = (received.body for received in fake.received)
    assert "calculator" in {tool["function"]["name"] for tool in first["tools"]}
    assistant, tool = second["messages"][-2:]
    assert assistant["tool_calls"] == [{"id": "call_calc", "type": "function", "function": {
        "name": "calculator", "arguments": '{"expression": "17 * 23"}'}}]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "call_calc"
    assert json.loads(tool["content"])["result"]["value"] == 391


async def test_text_before_and_after_a_tool_call_streams_and_ends_with_a_break(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    call = {"index": 0, "id": "call_calc", "type": "function",
            "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'}}
    fake.script(reply.stream({"role": "assistant", "content": "Let me "}, {"content": "check."},
                             {"tool_calls": [call]}, finish_reason="tool_calls"),
                reply.text("It is ", "4."))
    answer, events, _ = await run_the_agent(make_model(), "What is 2+2?")

    assert answer == streamed(events) == "Let me check.\n\nIt is 4."
    # The model hears back its own first words, without the break the user was shown.
    assistant = fake.received[1].body["messages"][-2]
    assert assistant["content"] == "Let me check." and assistant["tool_calls"][0]["id"] == "call_calc"


CUT_SHORT = [
    pytest.param({}, id="the connection closed cleanly mid-answer"),
    pytest.param({"usage": (12, 7)}, id="a usage chunk but no finish_reason"),
]


@pytest.mark.parametrize("ending", CUT_SHORT)
async def test_a_stream_that_ends_before_it_finished_is_bad_output(
    fake: FakeOpenAI, make_model: MakeModel, ending: dict
) -> None:
    fake.always(reply.stream({"role": "assistant", "content": "Half an "}, {"content": "answer"},
                             **({"finish_reason": None, "usage": None, "done": False} | ending)))
    received: list[ModelChunk] = []
    with pytest.raises(ModelError) as caught:
        async for chunk in make_model().stream(HELLO):
            received.append(chunk)
    assert caught.value.code == "model_bad_output"
    assert "ended before it finished" in caught.value.message
    # What streamed was already shown, so it is never asked for again (it would stream twice).
    assert [c.text for c in received if isinstance(c, TextDelta)] == ["Half an ", "answer"]
    assert len(fake.received) == 1


async def test_an_agent_whose_model_stream_is_cut_short_fails_instead_of_completing(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(reply.stream({"role": "assistant", "content": "Half an "}, {"content": "answer"},
                             finish_reason=None, usage=None, done=False))
    with pytest.raises(ModelError) as caught:
        await run_the_agent(make_model(), "Hello")
    assert caught.value.code == "model_bad_output"


@pytest.mark.parametrize("ending", [
    pytest.param({"done": False}, id="no [DONE] line"),
    pytest.param({"done": False, "usage": None}, id="no [DONE] line and no usage"),
    pytest.param({"finish_reason": "length"}, id="finished for length"),
])
async def test_a_stream_that_says_it_finished_is_whole_without_done(
    fake: FakeOpenAI, make_model: MakeModel, ending: dict
) -> None:
    fake.script(reply.stream({"role": "assistant", "content": "All "}, {"content": "here."}, **ending))
    chunks = await collect(make_model())
    assert [c.text for c in chunks if isinstance(c, TextDelta)] == ["All ", "here."]


async def test_retries_a_429_honouring_retry_after(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.script(reply.error(429, "Slow down", headers={"Retry-After": "0"}), reply.text("ok"))
    # A long backoff proves Retry-After was used instead.
    chunks = await asyncio.wait_for(collect(make_model(backoff_base_s=30.0)), timeout=5)
    assert [c.text for c in chunks if isinstance(c, TextDelta)] == ["ok"]
    assert len(fake.received) == 2


async def test_429_every_time_is_rate_limited(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.always(reply.error(429, "Slow down", headers={"Retry-After": "0"}))
    assert (await failure(make_model(max_retries=1))).code == "model_rate_limited"
    assert len(fake.received) == 2


async def test_500_every_time_is_unavailable_after_retries(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.always(reply.error(500, "The server had an error"))
    error = await failure(make_model(max_retries=3))
    assert error.code == "model_unavailable"
    assert len(fake.received) == 4


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_are_not_retried(
    fake: FakeOpenAI, make_model: MakeModel, status: int
) -> None:
    fake.always(reply.error(status, f"Incorrect API key provided: {API_KEY}"))
    error = await failure(make_model())
    assert error.code == "model_unauthorized"
    assert "GOLDENPATH_MODEL__API_KEY" in error.message
    assert len(fake.received) == 1


async def test_unknown_model_names_it(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.always(reply.error(404, "The model `gpt-9` does not exist"))
    error = await failure(make_model(model="gpt-9"))
    assert error.code == "model_not_found" and "gpt-9" in error.message
    assert len(fake.received) == 1


async def test_bad_request_shows_the_server_message(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.always(reply.error(400, f"This model's maximum context length is 8192 tokens ({API_KEY})"))
    error = await failure(make_model())
    assert error.code == "model_error"
    assert "maximum context length is 8192 tokens" in error.message
    assert len(fake.received) == 1


async def test_a_server_that_hangs_times_out(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.always(reply.hang(5.0))
    error = await asyncio.wait_for(failure(make_model(timeout_s=0.5)), timeout=3)
    assert error.code == "model_timeout"


async def test_nothing_listening_is_unavailable(make_model: MakeModel) -> None:
    error = await failure(make_model(base_url="http://127.0.0.1:9/v1", max_retries=1))
    assert error.code == "model_unavailable"


@pytest.mark.parametrize("line", ["{this is not json", '{"id": "x", "object": "chat.completion.chunk"}',
                                  '{"choices": [{"index": 0, "delta": {"content": 7}}]}'])
async def test_malformed_stream_is_bad_output(fake: FakeOpenAI, make_model: MakeModel, line: str) -> None:
    fake.always(reply.stream({"content": "never read"}, extra_lines=(line,)))
    error = await failure(make_model())
    assert error.code == "model_bad_output"
    assert len(fake.received) == 1


async def test_a_server_that_ignores_streaming_is_bad_output(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    async def whole_answer(request: web.Request, server: FakeOpenAI) -> web.StreamResponse:
        return web.json_response({"id": "chatcmpl-1", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]})

    fake.always(whole_answer)
    assert (await failure(make_model())).code == "model_bad_output"


async def test_an_error_after_text_streamed_is_not_retried(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.always(reply.text_then_drop("Half an ", "answer"))
    received: list[ModelChunk] = []
    with pytest.raises(ModelError) as caught:
        async for chunk in make_model().stream(HELLO):
            received.append(chunk)
    assert caught.value.code == "model_unavailable"
    assert [c.text for c in received if isinstance(c, TextDelta)] == ["Half an ", "answer"]
    assert len(fake.received) == 1


async def test_closing_early_closes_the_http_response(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.script(reply.endless("first words"))
    async with aclosing(make_model().stream(HELLO)) as chunks:
        async for chunk in chunks:
            assert chunk == TextDelta("first words")
            break
    await asyncio.wait_for(fake.disconnected.wait(), timeout=2)


async def test_cancellation_propagates(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.always(reply.hang(5.0))
    task = asyncio.create_task(collect(make_model()))
    await eventually(lambda: fake.received, what="the request reaching the fake server")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(fake.received) == 1


async def test_an_error_event_in_the_stream_names_the_servers_reason(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.always(reply.stream({"content": "never read"},
                             extra_lines=('{"error": {"message": "The server is overloaded"}}',)))
    error = await failure(make_model())
    assert error.code == "model_error" and "The server is overloaded" in error.message
    assert len(fake.received) == 1


async def test_done_without_a_finish_reason_is_whole(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.script(reply.stream({"role": "assistant", "content": "All "}, {"content": "here."},
                             finish_reason=None))
    chunks = await collect(make_model())
    assert [c.text for c in chunks if isinstance(c, TextDelta)] == ["All ", "here."]


async def test_a_server_that_hangs_up_before_answering_is_unavailable_and_retried(
    make_model: MakeModel
) -> None:
    # openai's aiohttp transport reports every dropped connection (here ServerDisconnectedError,
    # as a pooled connection the server closed gives) as a connect timeout: it is no timeout.
    hung_up = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hung_up
        hung_up += 1
        await reader.read(100)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        error = await asyncio.wait_for(
            failure(make_model(base_url=f"http://127.0.0.1:{port}/v1", max_retries=2)), timeout=5)
    finally:
        server.close()
    assert error.code == "model_unavailable"
    assert hung_up == 3
