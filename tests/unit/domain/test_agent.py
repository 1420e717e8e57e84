"""The agent loop's answer: what streamed as deltas is exactly what completes and is stored."""

from __future__ import annotations

import pytest
from dependency_injector import providers

from container import Container
from domain.agent import STEP_BREAK
from domain.entities import Role, RunStatus
from domain.llm import ModelChunk, TextDelta, ToolCallDelta
from tests.fakes import ScriptedModel, answer
from tests.unit.conftest import Fakes

CALCULATE = ToolCallDelta(index=0, id="call_1", name="calculator", arguments='{"expression": "2+2"}')


async def run_to_the_end(container: Container, fakes: Fakes, *steps: list[ModelChunk]) -> tuple[str, str]:
    """(the deltas concatenated, agent_completed's text) of one run, checked against the store."""
    container.chat_model.override(providers.Object(ScriptedModel(*steps)))
    await container.bridge().start()
    chat = await container.chat_service()
    run = (await chat.submit(user_id="usr_a", text="What is 2+2?", request_id="req_1")).run
    assert (await chat.wait("usr_a", run.id)).status is RunStatus.COMPLETED
    events = [e for e in fakes.events.events if e.run_id == run.id]
    streamed = "".join(e.data["delta"] for e in events if e.type.value == "agent_message_delta")
    [completed] = [e for e in events if e.type.value == "agent_completed"]
    [stored] = [m.text for m in fakes.messages.messages if m.role is Role.ASSISTANT]
    assert stored == completed.data["text"]
    return streamed, completed.data["text"]


async def test_text_on_both_sides_of_a_tool_call_is_kept_apart_with_a_visible_break(
        fake_container: Container, fakes: Fakes) -> None:
    streamed, text = await run_to_the_end(
        fake_container, fakes,
        [TextDelta("Let me "), TextDelta("check."), CALCULATE],
        answer("It is 4."),
    )
    assert text == "Let me check." + STEP_BREAK + "It is 4."
    assert streamed == text


@pytest.mark.parametrize("first", [
    pytest.param([CALCULATE], id="no text before the tool call"),
    pytest.param([TextDelta(""), CALCULATE], id="only empty text before the tool call"),
])
async def test_no_break_when_only_one_step_has_text(fake_container: Container, fakes: Fakes,
                                                    first: list[ModelChunk]) -> None:
    streamed, text = await run_to_the_end(fake_container, fakes, first, answer("It is 4."))
    assert text == streamed == "It is 4."


async def test_one_break_between_each_pair_of_steps_with_text(fake_container: Container,
                                                              fakes: Fakes) -> None:
    streamed, text = await run_to_the_end(
        fake_container, fakes,
        [TextDelta("First."), CALCULATE],
        [CALCULATE],
        [TextDelta("Second."), CALCULATE],
        answer("Done."),
    )
    assert text == streamed == STEP_BREAK.join(["First.", "Second.", "Done."])
