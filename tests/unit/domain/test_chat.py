"""ChatService with fakes: persistence order, faults, cancel, double-texting, idempotency, drain."""

from __future__ import annotations

import asyncio

import pytest
from dependency_injector import providers

from container import Container
from domain.chat import ChatService
from domain.entities import Role, Run, RunStatus
from domain.errors import (
    InvalidMessage,
    LimitExceeded,
    MessageTooLarge,
    ModelError,
    NotFound,
    ThreadBusy,
)
from domain.lanes import Multitask
from domain.llm import ToolCallDelta
from tests.fakes import RecordingRunControl, RecordingSocket, ScriptedModel, answer
from tests.helpers import eventually
from tests.unit.conftest import Fakes

TERMINAL = {"agent_completed", "agent_error", "agent_cancelled"}


async def chat_of(container: Container, model: ScriptedModel) -> ChatService:
    container.chat_model.override(providers.Object(model))
    await container.bridge().start()
    return await container.chat_service()


async def send(chat: ChatService, text: str = "hello", user: str = "usr_a", **kwargs):
    return (await chat.submit(user_id=user, text=text, request_id="req_1", **kwargs)).run


def long_answer(words: int = 40) -> list:
    return answer(" ".join(f"w{i}" for i in range(words)))



async def streaming(fakes: Fakes, run_id: str) -> None:
    """Until the run has streamed a first piece of its answer (so a cancel lands mid-stream)."""
    await eventually(lambda: "agent_message_delta" in fakes.events.types(run_id),
                     what=f"a first message delta of {run_id}")

async def test_a_run_persists_the_message_the_answer_and_its_end_before_the_terminal_event(
        fake_container: Container, fakes: Fakes) -> None:
    chat = await chat_of(fake_container, ScriptedModel(answer("hi there")))
    seen_status_at_terminal = []

    class Watching(RecordingSocket):
        def deliver(self, envelope) -> bool:
            super().deliver(envelope)
            if self.frames[-1]["type"] in TERMINAL:
                run = fakes.runs.runs[self.frames[-1]["run_id"]]
                seen_status_at_terminal.append(run.status)
            return True

    fake_container.bridge().register(Watching("usr_a"))
    run = await send(chat, "hello")
    finished = await chat.wait("usr_a", run.id)
    assert finished.status is RunStatus.COMPLETED and finished.finished_at is not None
    assert seen_status_at_terminal == [RunStatus.COMPLETED]
    roles = [(m.role, m.text) for m in fakes.messages.messages]
    assert roles == [(Role.USER, "hello"), (Role.ASSISTANT, "hi there")]
    types = fakes.events.types(run.id)
    assert types[0] == "agent_started" and types[-1] == "agent_completed"


@pytest.mark.parametrize(("failure", "code"), [
    (ModelError("The model service is down.", code="model_unavailable"), "model_unavailable"),
    (RuntimeError("secret internals"), "internal_error"),
])
async def test_a_failing_model_ends_the_run_with_agent_error(fake_container: Container, fakes: Fakes,
                                                             failure: Exception, code: str) -> None:
    chat = await chat_of(fake_container, ScriptedModel(failure))
    run = await send(chat)
    finished = await chat.wait("usr_a", run.id)
    assert finished.status is RunStatus.FAILED
    terminal = fakes.events.events[-1]
    assert terminal.type == "agent_error" and terminal.data["code"] == code
    assert "secret internals" not in terminal.data["message"]
    assert fake_container.engine_factory().metrics().active == 0


async def test_garbage_tool_call_from_the_model_fails_cleanly(fake_container: Container,
                                                               fakes: Fakes) -> None:
    chat = await chat_of(fake_container, ScriptedModel([ToolCallDelta(index=0, arguments="{")]))
    run = await send(chat)
    assert (await chat.wait("usr_a", run.id)).status is RunStatus.FAILED
    assert fakes.events.events[-1].data["code"] == "model_bad_output"


async def test_a_hanging_model_times_out(fake_container: Container, fakes: Fakes, unit_settings) -> None:
    unit_settings.limits.run_timeout_s = 0.2
    chat = await chat_of(fake_container, ScriptedModel(hang=True))
    run = await send(chat)
    finished = await chat.wait("usr_a", run.id)
    assert finished.status is RunStatus.CANCELLED
    assert fakes.events.events[-1].data == {"reason": "timeout"}
    assert fake_container.engine_factory().metrics().timed_out == 1


async def test_cancel_mid_stream_then_the_thread_goes_on(fake_container: Container, fakes: Fakes) -> None:
    model = ScriptedModel(long_answer(), answer("second answer"), pause_s=0.02)
    chat = await chat_of(fake_container, model)
    run = await send(chat)
    await streaming(fakes, run.id)
    await chat.cancel("usr_a", run_id=run.id)
    finished = await chat.wait("usr_a", run.id)
    assert finished.status is RunStatus.CANCELLED
    assert fakes.events.types(run.id)[-1] == "agent_cancelled"
    assert fakes.events.events[-1].data == {"reason": "user"}
    again = await send(chat, "and now?", thread_id=run.thread_id)
    assert (await chat.wait("usr_a", again.id)).status is RunStatus.COMPLETED
    await chat.cancel("usr_a", run_id=run.id)  # idempotent on an ended run


async def test_cancel_by_client_message_id(fake_container: Container, fakes: Fakes) -> None:
    chat = await chat_of(fake_container, ScriptedModel(long_answer(), pause_s=0.02))
    run = await send(chat, client_message_id="cm_1")
    await chat.cancel("usr_a", client_message_id="cm_1")
    assert (await chat.wait("usr_a", run.id)).status is RunStatus.CANCELLED
    with pytest.raises(NotFound):
        await chat.cancel("usr_b", client_message_id="cm_1")
    with pytest.raises(NotFound):
        await chat.cancel("usr_b", run_id=run.id)


async def test_the_same_client_message_id_starts_one_run(fake_container: Container, fakes: Fakes) -> None:
    chat = await chat_of(fake_container, ScriptedModel(answer("ok")))
    results = await asyncio.gather(*(chat.submit(user_id="usr_a", text="hi", request_id="r",
                                                 client_message_id="same") for _ in range(5)))
    assert len({r.run.id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    await chat.wait("usr_a", results[0].run.id)
    later = await chat.submit(user_id="usr_a", text="hi", request_id="r", client_message_id="same")
    assert later.duplicate and later.run.id == results[0].run.id
    assert len(fakes.runs.runs) == 1
    other_user = await send(chat, user="usr_b", client_message_id="same")
    assert other_user.id != results[0].run.id


async def test_enqueue_runs_one_after_the_other(fake_container: Container, fakes: Fakes) -> None:
    chat = await chat_of(fake_container, ScriptedModel(long_answer(5), pause_s=0.01))
    first = await send(chat)
    second = await send(chat, thread_id=first.thread_id)
    assert second.status is RunStatus.QUEUED
    await chat.wait("usr_a", second.id)
    order = [(e.run_id, e.type.value) for e in fakes.events.events]
    first_end = order.index((first.id, "agent_completed"))
    assert order.index((second.id, "agent_started")) > first_end


async def test_reject_answers_thread_busy(fake_container: Container) -> None:
    chat = await chat_of(fake_container, ScriptedModel(long_answer(), pause_s=0.02))
    first = await send(chat)
    with pytest.raises(ThreadBusy):
        await send(chat, thread_id=first.thread_id, multitask=Multitask.REJECT)
    await chat.cancel("usr_a", run_id=first.id)


async def test_interrupt_cancels_the_running_one(fake_container: Container, fakes: Fakes) -> None:
    chat = await chat_of(fake_container, ScriptedModel(long_answer(), answer("fresh"), pause_s=0.02))
    first = await send(chat)
    await streaming(fakes, first.id)
    second = await send(chat, thread_id=first.thread_id, multitask=Multitask.INTERRUPT)
    assert (await chat.wait("usr_a", first.id)).status is RunStatus.CANCELLED
    assert [e.data for e in fakes.events.events if e.run_id == first.id][-1] == {"reason": "interrupted"}
    assert (await chat.wait("usr_a", second.id)).status is RunStatus.COMPLETED


async def test_cancelling_a_queued_run_ends_it_at_once(fake_container: Container, fakes: Fakes) -> None:
    chat = await chat_of(fake_container, ScriptedModel(long_answer(), pause_s=0.02))
    first = await send(chat)
    queued = await send(chat, thread_id=first.thread_id)
    await chat.cancel("usr_a", run_id=queued.id)
    finished = await asyncio.wait_for(chat.wait("usr_a", queued.id), 1)
    assert finished.status is RunStatus.CANCELLED
    assert fakes.events.types(queued.id) == ["agent_started", "agent_cancelled"]
    assert fakes.runs.runs[first.id].status is RunStatus.RUNNING
    await chat.cancel("usr_a", run_id=first.id)


async def test_pending_runs_per_user_are_bounded(fake_container: Container, unit_settings) -> None:
    unit_settings.limits.max_pending_runs_per_user = 2
    chat = await chat_of(fake_container, ScriptedModel(long_answer(), pause_s=0.05))
    first = await send(chat)
    await send(chat, thread_id=first.thread_id)
    with pytest.raises(LimitExceeded):
        await send(chat)
    await send(chat, user="usr_b")  # another user is not affected
    await fake_container.run_registry().drain(0)


async def test_drain_cancels_what_does_not_finish_in_the_grace_period(fake_container: Container,
                                                                      fakes: Fakes) -> None:
    chat = await chat_of(fake_container, ScriptedModel(long_answer(), pause_s=0.05))
    run = await send(chat)
    await fake_container.run_registry().drain(0.05)
    assert fakes.runs.runs[run.id].status is RunStatus.CANCELLED
    assert fakes.events.events[-1].data == {"reason": "shutdown"}
    with pytest.raises(LimitExceeded):
        await send(chat)


@pytest.mark.parametrize(("text", "error"), [
    ("", InvalidMessage), ("   \n", InvalidMessage), (42, InvalidMessage), (None, InvalidMessage),
    ("x" * 8001, MessageTooLarge),
])
async def test_bad_messages_are_refused_and_nothing_is_stored(fake_container: Container, fakes: Fakes,
                                                             text: object, error: type) -> None:
    chat = await chat_of(fake_container, ScriptedModel(answer("x")))
    with pytest.raises(error):
        await send(chat, text)  # type: ignore[arg-type]
    assert fakes.runs.runs == {} and fakes.messages.messages == []


async def test_another_users_thread_is_not_found(fake_container: Container) -> None:
    chat = await chat_of(fake_container, ScriptedModel(answer("x")))
    run = await send(chat, user="usr_a")
    with pytest.raises(NotFound):
        await send(chat, user="usr_b", thread_id=run.thread_id)
    with pytest.raises(NotFound):
        await chat.wait("usr_b", run.id)


async def test_a_cancel_for_another_processs_run_is_forwarded_to_its_owner(fake_container: Container,
                                                                          fakes: Fakes) -> None:
    control = RecordingRunControl()
    fake_container.run_control.override(providers.Object(control))
    chat = await chat_of(fake_container, ScriptedModel(long_answer(), pause_s=0.02))
    elsewhere = Run(id="run_remote", user_id="usr_a", thread_id="thr_x", status=RunStatus.RUNNING,
                    created_at=fakes.clock.now(), owner="proc_other")
    fakes.runs.runs[elsewhere.id] = elsewhere
    await chat.cancel("usr_a", run_id="run_remote")
    assert control.sent == [("proc_other", "run_remote", "user")]
    # And the receiving side: a forwarded cancel stops a run that runs here.
    here = await send(chat)
    await streaming(fakes, here.id)
    registry = fake_container.run_registry()
    assert registry.cancel(here.id, "user") and not registry.cancel("run_unknown", "user")
    assert (await chat.wait("usr_a", here.id)).status is RunStatus.CANCELLED


async def test_a_queued_run_sees_the_turn_before_it_answered_and_its_own_message_last(
        fake_container: Container, fakes: Fakes) -> None:
    model = ScriptedModel(answer("first answer"), answer("second answer"), pause_s=0.01)
    chat = await chat_of(fake_container, model)
    first = await send(chat, "first question")
    second = await send(chat, "second question", thread_id=first.thread_id)
    await chat.wait("usr_a", second.id)
    seen = [(m.role, m.content) for m in model.requests[-1].messages if m.role != "system"]
    assert seen == [("user", "first question"), ("assistant", "first answer"),
                    ("user", "second question")]
