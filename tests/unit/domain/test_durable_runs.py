"""Durable runs with fakes: checkpoints stored with their events, and a run taken over going on
from its checkpoint (tools safe to repeat run again, others complete `interrupted`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from dependency_injector import providers

from container import Container
from domain.agent import INTERRUPTED_TOOL, SYSTEM_PROMPT
from domain.checkpoints import FORMAT, CheckpointUnreadable, restore
from domain.context import UserExecutionContext
from domain.entities import Message, Role, Run, RunStatus, Thread
from domain.events import AgentStarted, ToolExecuting
from domain.llm import ChatMessage, ToolCall, ToolCallDelta, ToolSpec
from domain.tools import ToolBox
from tests.fakes import ScriptedModel, answer
from tests.helpers import eventually
from tests.unit.conftest import Fakes

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "checkpoint_v1.json"


class Launch:
    """A tool with a side effect and no idempotency: never safe to run twice."""

    spec = ToolSpec("launch", "Launch it.", {"type": "object", "properties": {}})

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, context: UserExecutionContext, arguments: Mapping[str, Any], *,
                       call_key: str) -> Any:
        self.calls.append(call_key)
        return {"launched": True}


class Count(Launch):
    spec = ToolSpec("count", "Count.", {"type": "object", "properties": {}})
    idempotent = True


def calls(name: str) -> list:
    return [ToolCallDelta(index=0, id="call_1", name=name, arguments="{}")]


async def started(container: Container, model: ScriptedModel, *tools: Any):
    container.chat_model.override(providers.Object(model))
    if tools:
        container.toolbox.override(providers.Object(ToolBox(tools, timeout_s=5, pause_s=0)))
    await container.bridge().start()
    return await container.chat_service(), await container.housekeeper()


async def test_each_tool_step_is_checkpointed_with_its_event(fake_container: Container, fakes: Fakes) -> None:
    count = Count()
    chat, _ = await started(fake_container, ScriptedModel(calls("count"), answer("done")), count)
    run = (await chat.submit(user_id="usr_a", text="count", request_id="r")).run
    await chat.wait("usr_a", run.id)
    events = [e for e in fakes.events.events if e.run_id == run.id]
    checkpointed = [(e.seq, e.type.value) for e in events if e.checkpoint is not None]
    assert [kind for _, kind in checkpointed] == ["tool_executing", "tool_completed"]
    executing, completed = (e.checkpoint for e in events if e.checkpoint is not None)
    assert executing["in_flight"] == "call_1" and [c["id"] for c in executing["pending"]] == ["call_1"]
    assert completed["in_flight"] is None and completed["pending"] == []
    assert completed["seq"] == checkpointed[-1][0] and completed["format"] == FORMAT
    assert completed["conversation"][-1] == {"role": "tool", "content": '{"result": {"launched": true}}',
                                             "tool_call_id": "call_1"}
    assert fakes.events.checkpoints[run.id] == completed  # the latest is what a takeover reads
    assert count.calls == [f"{run.id}:call_1"]  # the idempotency key: the run's and the call's id


def a_run_cut_off_mid_tool(fakes: Fakes, tool: str, *,
                           epoch: int = 1) -> tuple[Run, UserExecutionContext, ToolCall, dict]:
    """What a process that died while `tool` ran leaves behind: the run, its events through
    tool_executing, and the checkpoint stored with that event."""
    now = fakes.clock.now()
    fakes.threads.threads["thr_a"] = Thread(id="thr_a", user_id="usr_a", title="t", created_at=now,
                                            updated_at=now)
    fakes.messages.messages.append(Message(id="msg_1", thread_id="thr_a", user_id="usr_a", role=Role.USER,
                                           text="do it", created_at=now, run_id="run_a"))
    run = Run(id="run_a", user_id="usr_a", thread_id="thr_a", status=RunStatus.RUNNING, created_at=now,
              owner="proc_dead", lease_expires_at=now - timedelta(seconds=61), lease_epoch=epoch - 1,
              takeovers=epoch - 1)
    fakes.runs.runs[run.id] = run
    call = ToolCall(id="call_1", name=tool, arguments="{}")
    checkpoint = {
        "format": 1, "seq": 2,
        "conversation": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "do it"},
                         {"role": "assistant", "content": "On it.", "tool_calls": [
                             {"id": "call_1", "name": tool, "arguments": "{}"}]}],
        "tool_calls": [{"id": "call_1", "name": tool, "arguments": "{}"}], "steps": 1,
        "answer": ["On it."], "usage": {"model_calls": 1, "prompt_tokens": 3, "completion_tokens": 2,
                                        "tool_calls": 1},
        "pending": [{"id": "call_1", "name": tool, "arguments": "{}"}], "in_flight": "call_1"}
    context = UserExecutionContext(user_id="usr_a", thread_id="thr_a", run_id="run_a", request_id="r",
                                   created_at=now, lease_epoch=epoch - 1)
    return run, context, call, checkpoint


async def emit_before_death(container: Container, context: UserExecutionContext, call: ToolCall,
                            checkpoint: dict) -> None:
    emitter = container.engine_factory().emitter_for(context)
    await emitter.emit(AgentStarted("scripted"))
    await emitter.emit(ToolExecuting(tool_call_id=call.id, tool=call.name, arguments={}),
                       checkpoint=lambda _seq: checkpoint)
    await emitter.confirm()


@pytest.mark.parametrize(("tool", "runs_again"), [(Launch, False), (Count, True)])
async def test_a_run_taken_over_goes_on_from_its_checkpoint(fake_container: Container, fakes: Fakes,
                                                            tool: type[Launch], runs_again: bool) -> None:
    made = tool()
    model = ScriptedModel(answer("All done."))
    chat, housekeeper = await started(fake_container, model, made)
    _, context, call, checkpoint = a_run_cut_off_mid_tool(fakes, made.spec.name)
    await emit_before_death(fake_container, context, call, checkpoint)

    taken = await housekeeper.recover_orphans()
    assert [r.id for r in taken] == ["run_a"]
    await chat.wait("usr_a", "run_a")

    events = [e for e in fakes.events.events if e.run_id == "run_a"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # gapless, nothing repeated
    kinds = [e.type.value for e in events]
    assert kinds[:3] == ["agent_started", "tool_executing", "run_resumed"]
    assert events[2].data == {"attempt": 1, "from_seq": 2, "text": "On it."}
    completed = next(e for e in events[3:] if e.type.value == "tool_completed")
    if runs_again:
        assert kinds[3] == "tool_executing" and completed.data["result"] == {"launched": True}
        assert made.calls == ["run_a:call_1"]
    else:
        assert completed.data["error"] == INTERRUPTED_TOOL and made.calls == []
    assert kinds[-1] == "agent_completed" and kinds.count("agent_completed") == 1
    # The model saw the conversation of the checkpoint, the tool's outcome last.
    seen = model.requests[-1].messages
    assert [m.role for m in seen] == ["system", "user", "assistant", "tool"]
    assert (INTERRUPTED_TOOL in seen[-1].content) is not runs_again
    assert events[-1].data["text"] == "On it.\n\nAll done."
    assert fakes.runs.runs["run_a"].status is RunStatus.COMPLETED
    assert [m.text for m in fakes.messages.messages if m.role is Role.ASSISTANT] == ["On it.\n\nAll done."]
    audit = [a for a in fakes.audit.entries if a.action.value == "run.resumed"]
    assert len(audit) == 1 and audit[0].detail.startswith("attempt 1 by ")


async def test_past_max_takeovers_a_run_ends_interrupted(fake_container: Container, fakes: Fakes) -> None:
    made = Count()
    _, housekeeper = await started(fake_container, ScriptedModel(answer("never")), made)
    _, context, call, checkpoint = a_run_cut_off_mid_tool(fakes, "count", epoch=3)  # taken twice before
    await emit_before_death(fake_container, context, call, checkpoint)
    assert [r.id for r in await housekeeper.recover_orphans()] == ["run_a"]
    await eventually(lambda: fakes.runs.runs["run_a"].status.is_final, what="the run's end")
    last = [e for e in fakes.events.events if e.run_id == "run_a"][-1]
    assert last.type.value == "agent_error" and last.data["code"] == "interrupted"
    assert made.calls == []
    registry = fake_container.run_registry()
    assert registry.takeovers() == {"resumed": 0, "interrupted": 1}


def test_a_checkpoint_of_format_1_is_still_read() -> None:
    stored = json.loads(FIXTURE.read_text())
    state = restore(stored)
    assert state.steps == 1 and state.in_flight == "call_7"
    assert [c.name for c in state.pending] == ["save_note"]
    assert state.conversation[-1] == ChatMessage(role="assistant", content="Saving that.", tool_calls=(
        ToolCall(id="call_7", name="save_note", arguments='{"text": "my code is 12"}'),))
    assert state.usage.model_calls == 1 and state.answer == ["Saving that."]


def test_a_checkpoint_this_release_cannot_read_says_so() -> None:
    with pytest.raises(CheckpointUnreadable, match="format 99"):
        restore({**json.loads(FIXTURE.read_text()), "format": 99})
    with pytest.raises(CheckpointUnreadable, match="damaged"):
        restore({"format": 1, "seq": 3})


async def test_a_resumed_run_is_cancelled_like_any_other(fake_container: Container, fakes: Fakes) -> None:
    made = Count()
    chat, housekeeper = await started(fake_container, ScriptedModel(hang=True), made)
    _, context, call, checkpoint = a_run_cut_off_mid_tool(fakes, "count")
    await emit_before_death(fake_container, context, call, checkpoint)
    await housekeeper.recover_orphans()
    await eventually(lambda: "tool_completed" in fakes.events.types("run_a"), what="the re-run tool")
    await chat.cancel("usr_a", run_id="run_a")
    await chat.wait("usr_a", "run_a")
    assert fakes.events.types("run_a")[-1] == "agent_cancelled"
    assert fakes.runs.runs["run_a"].status is RunStatus.CANCELLED
    assert fake_container.run_registry().pending("usr_a") == 0  # the user's count is back


async def test_a_checkpoint_that_cannot_be_read_ends_the_run_interrupted(fake_container: Container,
                                                                        fakes: Fakes) -> None:
    made = Count()
    chat, housekeeper = await started(fake_container, ScriptedModel(answer("never")), made)
    _, context, call, checkpoint = a_run_cut_off_mid_tool(fakes, "count")
    await emit_before_death(fake_container, context, call, {**checkpoint, "format": 99})
    await housekeeper.recover_orphans()
    await chat.wait("usr_a", "run_a")
    events = [e for e in fakes.events.events if e.run_id == "run_a"]
    assert [e.seq for e in events] == [1, 2, 3] and events[-1].type.value == "agent_error"
    assert events[-1].data["code"] == "interrupted" and made.calls == []
    assert fakes.runs.runs["run_a"].status is RunStatus.FAILED
