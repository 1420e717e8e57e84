"""The builtin model driven through the real agent loop, with the real tools and fakes."""

import json
from datetime import UTC, datetime

import pytest

from adapters.models.builtin import BuiltinChatModel, second_person, split_words
from domain.agent import run_agent
from domain.checkpoints import RunState
from domain.context import UserExecutionContext
from domain.emitter import RunEventEmitter
from domain.events import AgentEvent, EventType
from domain.llm import ChatMessage, ModelRequest, TextDelta, ToolCallDelta, UsageReport
from domain.tools import builtin_tools
from tests.fakes import (
    FixedClock,
    InMemoryNoteRepository,
    SequentialIds,
    approval_gate,
    engine_limits,
    toolbox,
)

NOW = datetime(2026, 11, 21, 14, 3, tzinfo=UTC)


class Harness:
    """One user's runs against one shared note store, recording every event."""

    def __init__(self, notes: InMemoryNoteRepository | None = None) -> None:
        self.clock = FixedClock(NOW)
        self.notes = notes or InMemoryNoteRepository()
        self.toolbox = toolbox(builtin_tools(notes=self.notes, ids=SequentialIds(), clock=self.clock))
        self.model = BuiltinChatModel()
        self.events: list[AgentEvent] = []

    async def _publish(self, event: AgentEvent) -> AgentEvent:
        self.events.append(event)
        return event

    async def ask(self, message: str, *, user_id: str = "u_alice",
                  history: tuple[ChatMessage, ...] = ()) -> str:
        self.events = []
        context = UserExecutionContext(user_id=user_id, thread_id="t_1", run_id="r_1",
                                       request_id="req_1", created_at=NOW)
        state = RunState(conversation=[*history, ChatMessage(role="user", content=message)])
        emitter = RunEventEmitter(context, self._publish, self.clock)
        try:
            return await run_agent(context=context, model=self.model, toolbox=self.toolbox,
                                   emitter=emitter, state=state,
                                   limits=engine_limits(max_steps=4), gate=approval_gate())
        finally:
            await emitter.confirm()  # events are pipelined: wait until all are published

    def types(self) -> list[EventType]:
        """Event types with repeats collapsed: the loop and the model may both say 'thinking'."""
        collapsed: list[EventType] = []
        for event in self.events:
            if not collapsed or collapsed[-1] != event.type:
                collapsed.append(event.type)
        return collapsed

    def of(self, type_: EventType) -> list[AgentEvent]:
        return [event for event in self.events if event.type == type_]

    def deltas(self) -> list[str]:
        return [event.data["delta"] for event in self.of(EventType.AGENT_MESSAGE_DELTA)]


async def test_arithmetic_goes_through_the_calculator() -> None:
    harness = Harness()
    answer = await harness.ask("What is 17 * 23?")
    assert harness.types() == [EventType.AGENT_THINKING, EventType.TOOL_EXECUTING,
                               EventType.TOOL_COMPLETED, EventType.AGENT_THINKING,
                               EventType.AGENT_MESSAGE_DELTA]
    [executing] = harness.of(EventType.TOOL_EXECUTING)
    assert executing.data["tool"] == "calculator"
    assert executing.data["arguments"] == {"expression": "17 * 23"}
    [completed] = harness.of(EventType.TOOL_COMPLETED)
    assert completed.data["result"]["value"] == 391
    assert len(harness.deltas()) > 1
    assert "".join(harness.deltas()) == answer == "17 * 23 = 391."


@pytest.mark.parametrize(
    ("message", "value"),
    [("calculate (2+3)^2", "25"), ("17*23", "391"), ("what's 12 divided by 4", "3")],
)
async def test_understands_other_phrasings_of_arithmetic(message: str, value: str) -> None:
    answer = await Harness().ask(message)
    assert answer.endswith(f"= {value}.")


async def test_a_calculator_error_is_explained() -> None:
    assert await Harness().ask("What is 1 / 0?") == "I couldn't calculate that: division by zero."


async def test_remembers_then_recalls_across_runs() -> None:
    harness = Harness()
    saved = await harness.ask("Remember that my locker code is 4417")
    assert saved == "Got it. I'll remember that your locker code is 4417."
    [executing] = harness.of(EventType.TOOL_EXECUTING)
    assert executing.data == {"tool_call_id": executing.data["tool_call_id"], "tool": "save_note",
                              "arguments": {"text": "my locker code is 4417"}}
    history = (ChatMessage(role="user", content="Remember that my locker code is 4417"),
               ChatMessage(role="assistant", content=saved))
    recalled = await harness.ask("What is my locker code?", history=history)
    assert recalled == "Your locker code is 4417."
    assert harness.of(EventType.TOOL_EXECUTING)[0].data["arguments"] == {"query": "locker code"}


async def test_another_user_recalls_nothing() -> None:
    notes = InMemoryNoteRepository()
    await Harness(notes).ask("Remember that my locker code is 4417", user_id="u_alice")
    answer = await Harness(notes).ask("What is my locker code?", user_id="u_bob")
    assert answer == ('I don\'t have anything noted about locker code yet. '
                      'Tell me with "Remember that ...".')


async def test_tells_the_time() -> None:
    harness = Harness()
    assert await harness.ask("What time is it?") == "It is 14:03 UTC on Saturday, 21 November 2026."
    assert harness.of(EventType.TOOL_EXECUTING)[0].data["tool"] == "current_time"
    tokyo = await harness.ask("what time is it in Tokyo?")
    assert tokyo == "It is 23:03 Asia/Tokyo on Saturday, 21 November 2026."


@pytest.mark.parametrize(
    "message", ["hello", "Hi!", "thanks", "how are you?", "who are you?", "bye"]
)
async def test_small_talk_uses_no_tool(message: str) -> None:
    harness = Harness()
    answer = await harness.ask(message)
    assert answer and not harness.of(EventType.TOOL_EXECUTING)
    assert "".join(harness.deltas()) == answer


async def test_anything_else_says_it_is_not_a_language_model() -> None:
    harness = Harness()
    answer = await harness.ask("What is the capital of France?")
    assert "not a language model" in answer
    assert "17 * 23" in answer and "locker code" in answer
    assert not harness.of(EventType.TOOL_EXECUTING)
    assert "".join(harness.deltas()) == answer


async def test_my_question_is_not_arithmetic() -> None:
    harness = Harness()
    await harness.ask("What is my locker code?")
    assert [e.data["tool"] for e in harness.of(EventType.TOOL_EXECUTING)] == ["search_notes"]


async def _chunks(request: ModelRequest) -> list:
    return [chunk async for chunk in BuiltinChatModel().stream(request)]


async def test_streams_tool_arguments_in_pieces_like_openai() -> None:
    tools = toolbox(builtin_tools(notes=InMemoryNoteRepository(), ids=SequentialIds(),
                                  clock=FixedClock(NOW))).specs
    chunks = await _chunks(ModelRequest(messages=(ChatMessage(role="user",
                                                              content="What is 17 * 23?"),),
                                        tools=tools))
    calls = [chunk for chunk in chunks if isinstance(chunk, ToolCallDelta)]
    assert len(calls) > 1 and {call.index for call in calls} == {0}
    assert calls[0].id and calls[0].id.startswith("call_") and calls[0].name == "calculator"
    assert all(call.id is None and call.name is None for call in calls[1:])
    assert json.loads("".join(call.arguments for call in calls)) == {"expression": "17 * 23"}
    assert isinstance(chunks[-1], UsageReport) and chunks[-1].completion_tokens > 0


async def test_uses_only_the_tools_it_is_given() -> None:
    chunks = await _chunks(ModelRequest(messages=(ChatMessage(role="user",
                                                              content="What is 17 * 23?"),)))
    assert not any(isinstance(chunk, ToolCallDelta) for chunk in chunks)
    assert any(isinstance(chunk, TextDelta) for chunk in chunks)


def test_split_words_joins_back_exactly() -> None:
    for text in ["17 * 23 = 391.", "  a  b\nc ", "one", ""]:
        assert "".join(split_words(text, 2)) == text
    assert split_words("a b c d e", 2) == ["a b", " c d", " e"]


def test_second_person() -> None:
    assert second_person("my locker code is 4417") == "your locker code is 4417"
    assert second_person("I'm allergic to nuts.") == "you're allergic to nuts"
    assert second_person("I am tall and I like tea") == "you are tall and you like tea"
