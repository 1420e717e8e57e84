"""Housekeeping: leases renewed, orphans of dead processes failed with a last event, leaks swept."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from dependency_injector import providers

from container import Container
from domain.context import UserExecutionContext
from domain.entities import Run, RunStatus
from domain.errors import LeaseLost, StorageUnavailable
from domain.events import AgentCompleted, AgentStarted, AgentThinking
from tests.fakes import ScriptedModel, answer
from tests.helpers import eventually
from tests.unit.conftest import Fakes


async def started(container: Container, *, max_takeovers: int = 0):
    """The container's housekeeper; by default one that ends every run it takes over (the runs
    here are made by hand, with no thread or message to resume from: test_durable_runs resumes)."""
    settings = container.settings()
    container.settings.override(providers.Object(settings.model_copy(update={
        "runs": settings.runs.model_copy(update={"max_takeovers": max_takeovers})})))
    container.chat_model.override(providers.Object(ScriptedModel(answer("fine"))))
    await container.bridge().start()
    return await container.housekeeper()


def run(fakes: Fakes, run_id: str, *, owner: str, lease_in_s: float,
        status: RunStatus = RunStatus.RUNNING) -> Run:
    now = fakes.clock.now()
    made = Run(id=run_id, user_id="usr_a", thread_id="thr_a", status=status, created_at=now,
               owner=owner, lease_expires_at=now + timedelta(seconds=lease_in_s))
    fakes.runs.runs[run_id] = made
    return made


async def test_orphans_of_a_dead_process_end_interrupted_with_the_next_seq(fake_container: Container,
                                                                           fakes: Fakes) -> None:
    housekeeper = await started(fake_container)
    run(fakes, "run_dead", owner="proc_dead", lease_in_s=-31)
    run(fakes, "run_queued", owner="proc_dead", lease_in_s=-31, status=RunStatus.QUEUED)
    run(fakes, "run_late", owner="proc_slow", lease_in_s=-1)  # lapsed, within the grace
    run(fakes, "run_alive", owner="proc_other", lease_in_s=20)
    run(fakes, "run_done", owner="proc_dead", lease_in_s=-1, status=RunStatus.COMPLETED)
    emitter = fake_container.engine_factory().emitter_for(UserExecutionContext(
        user_id="usr_a", thread_id="thr_a", run_id="run_dead", request_id="r",
        created_at=fakes.clock.now()))
    await emitter.emit(AgentStarted("builtin"))
    await emitter.emit(AgentThinking("hm"))

    recovered = await housekeeper.recover_orphans()

    assert sorted(r.id for r in recovered) == ["run_dead", "run_queued"]
    assert fakes.runs.runs["run_dead"].status is RunStatus.FAILED
    assert fakes.runs.runs["run_alive"].status is RunStatus.RUNNING
    assert fakes.runs.runs["run_done"].status is RunStatus.COMPLETED
    dead = [e for e in fakes.events.events if e.run_id == "run_dead"]
    assert [(e.seq, e.type.value) for e in dead][-1] == (3, "agent_error")
    assert dead[-1].data["code"] == "interrupted"
    queued = [(e.seq, e.type.value) for e in fakes.events.events if e.run_id == "run_queued"]
    assert queued == [(1, "agent_started"), (2, "agent_error")]
    assert await housekeeper.recover_orphans() == []  # each orphan is claimed once


async def test_a_live_process_renews_only_the_leases_of_runs_its_tasks_run(fake_container: Container,
                                                                           fakes: Fakes) -> None:
    housekeeper = await started(fake_container)
    owner = fake_container.lease().owner
    mine = run(fakes, "run_mine", owner=owner, lease_in_s=1)
    run(fakes, "run_idle", owner=owner, lease_in_s=1)  # no task runs it (its task died): must lapse
    registry, release = fake_container.run_registry(), asyncio.Event()

    async def execute(_run: Run) -> None:
        await release.wait()

    registry.launch(mine, execute)
    fakes.clock.advance(20)
    assert await housekeeper.renew_leases() == 1
    assert await housekeeper.recover_orphans() == []
    fakes.clock.advance(31)  # run_idle lapsed one ttl ago: a crash, or a task that died
    assert await housekeeper.renew_leases() == 1
    assert [r.id for r in await housekeeper.recover_orphans()] == ["run_idle"]
    release.set()
    await eventually(lambda: registry.active == 0, what="the run's task ends")
    fakes.clock.advance(61)
    assert await housekeeper.renew_leases() == 0
    assert [r.id for r in await housekeeper.recover_orphans()] == ["run_mine"]


async def test_a_takeover_fences_the_old_holder_its_late_events_are_refused_and_its_engine_stops(
        fake_container: Container, fakes: Fakes) -> None:
    housekeeper = await started(fake_container)
    run(fakes, "run_stalled", owner="proc_stalled", lease_in_s=-31)
    context = UserExecutionContext(user_id="usr_a", thread_id="thr_a", run_id="run_stalled",
                                   request_id="r", created_at=fakes.clock.now())
    stalled = fake_container.engine_factory().emitter_for(context)  # the old holder, epoch 0
    await stalled.emit(AgentStarted("builtin"))
    assert [r.lease_epoch for r in await housekeeper.recover_orphans()] == [1]
    with pytest.raises(LeaseLost):
        await stalled.emit(AgentCompleted(message_id="msg_late", text="late", usage={}))
    assert stalled.lease_lost
    events = [(e.seq, e.type.value) for e in fakes.events.events if e.run_id == "run_stalled"]
    assert events == [(1, "agent_started"), (2, "agent_error")]  # one terminal event, the last
    assert fakes.runs.runs["run_stalled"].status is RunStatus.FAILED
    assert not any(m.id == "msg_late" for m in fakes.messages.messages)


async def test_a_restarted_process_takes_back_its_predecessors_runs_at_boot(fake_container: Container,
                                                                          fakes: Fakes) -> None:
    housekeeper = await started(fake_container)
    owner = fake_container.lease().owner
    run(fakes, "run_before", owner=owner, lease_in_s=25)  # its lease has not even lapsed
    run(fakes, "run_other", owner="proc_other", lease_in_s=25)
    await housekeeper.boot()
    assert fakes.runs.runs["run_before"].status is RunStatus.FAILED
    assert fakes.runs.runs["run_other"].status is RunStatus.RUNNING
    assert [e.type.value for e in fakes.events.events if e.run_id == "run_before"] == [
        "agent_started", "agent_error"]


async def test_a_run_stranded_by_an_outage_is_ended_once_the_database_answers(
        fake_container: Container, fakes: Fakes) -> None:
    housekeeper = await started(fake_container)
    stranded = run(fakes, "run_stranded", owner=fake_container.lease().owner, lease_in_s=25)
    registry = fake_container.run_registry()
    registry.strand(stranded)
    original = fakes.events.submit

    def away(_event):
        raise StorageUnavailable("the database is away")

    fakes.events.submit = away  # type: ignore[method-assign]
    assert await housekeeper.end_stranded() == []
    assert registry.stranded() == [stranded]
    fakes.events.submit = original  # type: ignore[method-assign]
    assert [r.id for r in await housekeeper.end_stranded()] == ["run_stranded"]
    assert registry.stranded() == [] and fakes.runs.runs["run_stranded"].status is RunStatus.FAILED


async def test_runs_are_created_with_this_processs_lease(fake_container: Container, fakes: Fakes) -> None:
    await started(fake_container)
    chat = await fake_container.chat_service()
    submitted = (await chat.submit(user_id="usr_a", text="hi", request_id="r")).run
    stored = fakes.runs.runs[submitted.id]
    assert stored.owner == fake_container.lease().owner
    assert stored.lease_expires_at == fakes.clock.now() + timedelta(seconds=30)
    await chat.wait("usr_a", submitted.id)


async def test_sweep_cleans_up_engines_that_outlived_their_run(fake_container: Container,
                                                              unit_settings) -> None:
    unit_settings.limits.run_timeout_s = 1
    await started(fake_container)
    factory = fake_container.engine_factory()
    leaked = await factory.create_for_user(UserExecutionContext(
        user_id="usr_a", thread_id="thr_a", run_id="run_leak", request_id="r",
        created_at=datetime.now(UTC)))
    assert await factory.sweep() == 0
    leaked.created_monotonic -= 120
    assert await factory.sweep() == 1
    assert leaked.closed and factory.metrics().active == 0 and factory.metrics().swept == 1
