"""Approvals with fakes: a run that asks is a stored question and nothing else; a decision, a
grant, a timeout or a cancel moves it on exactly once; a run taken over after its decision does
not ask again."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest
from dependency_injector import providers

from container import Container
from domain.approval_policy import APPROVAL_TIMEOUT, Remember
from domain.checkpoints import FORMAT, restore
from domain.entities import AuditAction, Note, RunStatus
from domain.errors import Conflict, LimitExceeded, NotFound
from domain.llm import ToolCallDelta
from tests.fakes import ScriptedModel, answer
from tests.helpers import eventually
from tests.unit.conftest import Fakes

FIXTURE_V2 = Path(__file__).resolve().parents[2] / "fixtures" / "checkpoint_v2.json"


def forget(call_id: str = "call_1") -> list:
    return [ToolCallDelta(index=0, id=call_id, name="delete_notes", arguments='{"query": "locker code"}')]


async def started(container: Container, *steps: list) -> tuple:
    container.chat_model.override(providers.Object(ScriptedModel(*steps)))
    await container.bridge().start()
    return await container.chat_service(), await container.approval_service(), await container.housekeeper()


async def waiting_run(fakes: Fakes, chat, text: str = "forget my locker code", **fields):
    fakes.notes.notes.append(Note(id="note_1", user_id="usr_a", text="my locker code is 4417",
                                  created_at=fakes.clock.now()))
    run = (await chat.submit(user_id="usr_a", text=text, request_id="r", **fields)).run
    await chat.wait("usr_a", run.id)
    return fakes.runs.runs[run.id]


def types(fakes: Fakes, run_id: str) -> list[str]:
    return fakes.events.types(run_id)


async def test_a_run_that_asks_waits_holding_nothing(fake_container: Container, fakes: Fakes) -> None:
    chat, approvals, _ = await started(fake_container, forget(), answer("done"))
    run = await waiting_run(fakes, chat)
    assert run.status is RunStatus.WAITING and run.owner is None and run.lease_expires_at is None
    assert types(fakes, run.id) == ["agent_started", "agent_thinking", "approval_required"]
    asked = fakes.events.events[-1]
    assert asked.data["tool_call_id"] == "call_1" and asked.data["arguments"] == {"query": "locker code"}
    assert run.wait_expires_at == fakes.clock.now() + timedelta(hours=1)
    factory, registry = fake_container.engine_factory(), fake_container.run_registry()
    assert factory.metrics().active == 0 and registry.active == 0 and registry.pending("usr_a") == 0
    assert await fakes.runs.count_unfinished("usr_a") == 0  # a waiting run does not count as going
    state = restore(fakes.events.checkpoints[run.id])
    assert state.awaiting == asked.data and state.pending[0].id == "call_1"
    assert await approvals.pending(run) == [{**asked.data, "seq": asked.seq}]
    assert [a.action for a in fakes.audit.entries].count(AuditAction.RUN_WAITING) == 1
    assert fakes.notes.notes  # nothing deleted yet


async def test_approved_the_tool_runs_and_the_run_completes(fake_container: Container, fakes: Fakes) -> None:
    chat, approvals, _ = await started(fake_container, forget(), answer("Forgotten."))
    run = await waiting_run(fakes, chat)
    claimed = await approvals.decide("usr_a", run.id, "call_1", approve=True)
    assert claimed.status is RunStatus.RUNNING and claimed.lease_epoch == run.lease_epoch + 1
    await chat.wait("usr_a", run.id)
    assert types(fakes, run.id)[3:] == ["approval_decided", "tool_executing", "tool_completed",
                                        "agent_thinking", "agent_message_delta", "agent_completed"]
    seqs = [e.seq for e in fakes.events.events if e.run_id == run.id]
    assert seqs == list(range(1, len(seqs) + 1))
    decided = next(e for e in fakes.events.events if e.type.value == "approval_decided")
    assert decided.data == {"tool_call_id": "call_1", "approved": True, "by": "user"}
    assert fakes.notes.notes == [] and fakes.runs.runs[run.id].status is RunStatus.COMPLETED
    with pytest.raises(Conflict):
        await approvals.decide("usr_a", run.id, "call_1", approve=True)


async def test_denied_the_tool_completes_denied_and_the_model_answers(fake_container: Container,
                                                                      fakes: Fakes) -> None:
    model = ScriptedModel(forget(), answer("I kept it."))
    fake_container.chat_model.override(providers.Object(model))
    await fake_container.bridge().start()
    chat, approvals = await fake_container.chat_service(), await fake_container.approval_service()
    run = await waiting_run(fakes, chat)
    await approvals.decide("usr_a", run.id, "call_1", approve=False, reason="keep it")
    await chat.wait("usr_a", run.id)
    completed = next(e for e in fakes.events.events if e.type.value == "tool_completed")
    assert completed.data["error"] == "denied" and "tool_executing" not in types(fakes, run.id)
    assert "keep it" in model.requests[-1].messages[-1].content  # the model is told why
    assert fakes.notes.notes and fakes.runs.runs[run.id].status is RunStatus.COMPLETED


async def test_two_decisions_at_once_one_wins(fake_container: Container, fakes: Fakes) -> None:
    chat, approvals, _ = await started(fake_container, forget(), answer("done"))
    run = await waiting_run(fakes, chat)
    outcomes = await asyncio.gather(approvals.decide("usr_a", run.id, "call_1", approve=True),
                                    approvals.decide("usr_a", run.id, "call_1", approve=False),
                                    return_exceptions=True)
    assert sorted(type(o).__name__ for o in outcomes) == ["Conflict", "Run"]
    await chat.wait("usr_a", run.id)
    assert types(fakes, run.id).count("approval_decided") == 1
    assert types(fakes, run.id).count("agent_completed") == 1


async def test_unknown_foreign_and_full_are_refused_and_the_run_still_waits(fake_container: Container,
                                                                           fakes: Fakes) -> None:
    chat, approvals, _ = await started(fake_container, forget(), answer("done"))
    run = await waiting_run(fakes, chat)
    with pytest.raises(NotFound):
        await approvals.decide("usr_b", run.id, "call_1", approve=True)
    with pytest.raises(NotFound):
        await approvals.decide("usr_a", run.id, "call_9", approve=True)
    with pytest.raises(NotFound):
        await approvals.decide("usr_a", "run_nope", "call_1", approve=True)
    factory = fake_container.engine_factory()
    factory._per_user["usr_a"] = factory.limits.max_engines_per_user  # as if that many were going
    with pytest.raises(LimitExceeded):
        await approvals.decide("usr_a", run.id, "call_1", approve=True)
    del factory._per_user["usr_a"]
    assert fakes.runs.runs[run.id].status is RunStatus.WAITING
    await approvals.decide("usr_a", run.id, "call_1", approve=True)
    await chat.wait("usr_a", run.id)
    assert fakes.runs.runs[run.id].status is RunStatus.COMPLETED


async def test_a_grant_answers_later_calls_in_its_scope(fake_container: Container, fakes: Fakes) -> None:
    chat, approvals, _ = await started(fake_container, forget("call_1"), answer("one"),
                                       forget("call_2"), answer("two"), forget("call_3"))
    run = await waiting_run(fakes, chat)
    await approvals.decide("usr_a", run.id, "call_1", approve=True, remember=Remember.THREAD)
    await chat.wait("usr_a", run.id)
    [grant] = await approvals.grants("usr_a")
    assert grant.tool == "delete_notes" and grant.thread_id == run.thread_id
    again = (await chat.submit(user_id="usr_a", text="forget it", request_id="r",
                               thread_id=run.thread_id)).run
    await chat.wait("usr_a", again.id)
    by_grant = [e for e in fakes.events.events if e.run_id == again.id and e.type.value == "approval_decided"]
    assert [e.data["by"] for e in by_grant] == ["grant"] and "approval_required" not in types(fakes, again.id)
    elsewhere = (await chat.submit(user_id="usr_a", text="forget it", request_id="r")).run  # a new thread
    await chat.wait("usr_a", elsewhere.id)
    assert fakes.runs.runs[elsewhere.id].status is RunStatus.WAITING
    with pytest.raises(NotFound):
        await approvals.revoke("usr_b", grant.id)
    await approvals.revoke("usr_a", grant.id)
    assert await approvals.grants("usr_a") == []


async def test_an_unanswered_question_lapses_into_a_cancel(fake_container: Container, fakes: Fakes) -> None:
    chat, approvals, housekeeper = await started(fake_container, forget(), answer("done"))
    run = await waiting_run(fakes, chat)
    await housekeeper.boot()
    assert fakes.runs.runs[run.id].status is RunStatus.WAITING  # not yet: nothing lapsed
    fakes.clock.advance(3601)
    with pytest.raises(Conflict):
        await approvals.decide("usr_a", run.id, "call_1", approve=True)
    await housekeeper.boot()
    assert types(fakes, run.id)[-2:] == ["approval_decided", "agent_cancelled"]
    assert fakes.events.events[-2].data == {"tool_call_id": "call_1", "approved": False, "by": "timeout"}
    assert fakes.events.events[-1].data == {"reason": APPROVAL_TIMEOUT}
    ended = fakes.runs.runs[run.id]
    assert ended.status is RunStatus.CANCELLED and ended.error == APPROVAL_TIMEOUT
    await housekeeper.boot()
    assert types(fakes, run.id).count("agent_cancelled") == 1


async def test_cancel_ends_a_waiting_run_once(fake_container: Container, fakes: Fakes) -> None:
    chat, approvals, _ = await started(fake_container, forget(), answer("done"))
    run = await waiting_run(fakes, chat)
    await asyncio.gather(chat.cancel("usr_a", run_id=run.id), chat.cancel("usr_a", run_id=run.id))
    kinds = types(fakes, run.id)
    assert kinds[-1] == "agent_cancelled" and kinds.count("agent_cancelled") == 1
    assert fakes.runs.runs[run.id].status is RunStatus.CANCELLED
    with pytest.raises(Conflict):
        await approvals.decide("usr_a", run.id, "call_1", approve=True)


async def test_a_run_taken_over_after_its_decision_does_not_ask_again(fake_container: Container,
                                                                       fakes: Fakes) -> None:
    """The decision is stored with the claim: a process that dies before the tool ran leaves a
    run that goes on, with the decision, wherever it is taken over."""
    chat, _, housekeeper = await started(fake_container, forget(), answer("done"))
    run = await waiting_run(fakes, chat)
    state = restore(fakes.events.checkpoints[run.id])
    state.decide("call_1", approved=True, by="user")
    # What decide() stores, by a process that then died before going on (its lease lapses).
    claimed = await fakes.runs.claim_waiting(run.id, owner="proc_dead", until=fakes.clock.now(),
                                             checkpoint=state.checkpoint(3))
    assert claimed is not None
    fakes.clock.advance(61)
    assert [r.id for r in await housekeeper.recover_orphans()] == [run.id]
    await eventually(lambda: fakes.runs.runs[run.id].status.is_final, what="the run's end")
    kinds = types(fakes, run.id)
    assert kinds.count("approval_required") == 1 and kinds.count("approval_decided") == 1
    assert kinds[3:6] == ["run_resumed", "approval_decided", "tool_executing"]
    assert kinds[-1] == "agent_completed" and fakes.notes.notes == []


async def test_a_message_behind_a_waiting_run_waits_for_it(fake_container: Container, fakes: Fakes) -> None:
    chat, approvals, _ = await started(fake_container, forget(), answer("forgotten"), answer("four"))
    run = await waiting_run(fakes, chat)
    behind = (await chat.submit(user_id="usr_a", text="2 + 2", request_id="r", thread_id=run.thread_id)).run
    registry = fake_container.run_registry()
    await eventually(lambda: registry.active == 1, what="the queued run held")
    assert fakes.events.types(behind.id) == [] and fakes.runs.runs[behind.id].status is RunStatus.QUEUED
    await approvals.decide("usr_a", run.id, "call_1", approve=True)
    await chat.wait("usr_a", behind.id)
    ends = [(e.run_id, e.type.value) for e in fakes.events.events if e.type.value in ("agent_completed",
                                                                                       "agent_started")]
    assert ends[-3:] == [(run.id, "agent_completed"), (behind.id, "agent_started"),
                         (behind.id, "agent_completed")]


def test_a_checkpoint_of_format_2_is_read_with_its_question_and_decisions() -> None:
    stored = json.loads(FIXTURE_V2.read_text())
    assert stored["format"] == FORMAT == 2
    state = restore(stored)
    assert state.awaiting is not None and state.awaiting["tool"] == "delete_notes"
    assert state.decisions == {"call_0": {"approved": False, "by": "user", "reason": "no",
                                          "announced": True}}
    assert state.checkpoint(stored["seq"]) == stored

