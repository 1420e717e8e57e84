"""ExecutionEngineFactory: one engine per run, bound to the bridge, within limits, always cleaned up."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dependency_injector import providers

from container import Container
from domain.context import UserExecutionContext
from domain.entities import AuditAction, Run, RunStatus, Thread
from domain.errors import EngineClosed, LimitExceeded
from domain.events import EventType
from tests.fakes import RecordingSocket, ScriptedModel, answer
from tests.unit.conftest import Fakes

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def ctx(user: str = "usr_a", run: str = "run_1") -> UserExecutionContext:
    return UserExecutionContext(user_id=user, thread_id=f"thr_{user}", run_id=run,
                                request_id="req_1", created_at=NOW)


def held(fakes: Fakes, context: UserExecutionContext) -> UserExecutionContext:
    """The run exists and this process holds it: the event log takes its events (they are fenced)."""
    fakes.runs.runs[context.run_id] = Run(id=context.run_id, user_id=context.user_id,
                                          thread_id=context.thread_id, status=RunStatus.RUNNING,
                                          created_at=NOW)
    fakes.threads.threads.setdefault(context.thread_id, Thread(
        id=context.thread_id, user_id=context.user_id, title="t", created_at=NOW, updated_at=NOW))
    return context


async def factory_of(container: Container, model: ScriptedModel | None = None):
    container.chat_model.override(providers.Object(model or ScriptedModel(answer("hello there"))))
    bridge = container.bridge()
    await bridge.start()
    return container.engine_factory(), bridge


async def test_engine_emits_through_the_bridge_for_its_own_context(fake_container: Container,
                                                                   fakes: Fakes) -> None:
    factory, bridge = await factory_of(fake_container)
    alice, bob = RecordingSocket("usr_a"), RecordingSocket("usr_b")
    bridge.register(alice)
    bridge.register(bob)
    async with factory.user_execution_scope(held(fakes, ctx())) as engine:
        assert factory.metrics().active == 1
        outcome = await engine.run([])
        await engine.finish(outcome, message_id="msg_1")
    assert next(f["type"] for f in alice.frames) == "agent_started"
    assert alice.frames[-1]["data"]["text"] == "hello there"
    assert [f["seq"] for f in alice.frames] == list(range(1, len(alice.frames) + 1))
    assert bob.frames == []
    assert {e.user_id for e in fakes.events.events} == {"usr_a"}
    metrics = factory.metrics()
    assert (metrics.created, metrics.active, metrics.cleaned_up) == (1, 0, 1)
    actions = [e.action for e in fakes.audit.entries]
    assert actions == [AuditAction.ENGINE_CREATED, AuditAction.ENGINE_CLEANED_UP]


async def test_scope_cleans_up_when_the_block_raises(fake_container: Container) -> None:
    factory, _ = await factory_of(fake_container)
    with pytest.raises(RuntimeError, match="boom"):
        async with factory.user_execution_scope(ctx()) as engine:
            raise RuntimeError("boom")
    assert factory.metrics().active == 0
    with pytest.raises(EngineClosed):
        _ = engine.context
    with pytest.raises(EngineClosed):
        await engine.run([])


async def test_cleanup_is_idempotent_and_a_started_run_always_gets_a_terminal_event(
        fake_container: Container, fakes: Fakes) -> None:
    factory, _ = await factory_of(fake_container)
    engine = await factory.create_for_user(held(fakes, ctx()))
    await engine.run([])  # no finish(): cleanup must still end the run
    await factory.cleanup_engine(engine)
    await factory.cleanup_engine(engine)
    types = fakes.events.types("run_1")
    assert types[-1] == EventType.AGENT_ERROR
    assert sum(t in {"agent_completed", "agent_error", "agent_cancelled"} for t in types) == 1
    assert factory.metrics().cleaned_up == 1


async def test_an_engine_runs_once(fake_container: Container) -> None:
    factory, _ = await factory_of(fake_container)
    async with factory.user_execution_scope(ctx()) as engine:
        await engine.run([])
        with pytest.raises(RuntimeError, match="once"):
            await engine.run([])


async def test_per_user_limit_refuses_only_that_user(fake_container: Container, fakes: Fakes) -> None:
    factory, _ = await factory_of(fake_container)
    limit = factory.limits.max_engines_per_user
    engines = [await factory.create_for_user(ctx("usr_a", f"run_{i}")) for i in range(limit)]
    with pytest.raises(LimitExceeded):
        await factory.create_for_user(ctx("usr_a", "run_over"))
    other = await factory.create_for_user(ctx("usr_b", "run_b"))
    assert factory.metrics().rejected == 1
    assert fakes.audit.entries[-2].action is AuditAction.ENGINE_REJECTED
    for engine in [*engines, other]:
        await factory.cleanup_engine(engine)
    assert factory.metrics().active == 0
    await factory.cleanup_engine(await factory.create_for_user(ctx("usr_a", "run_again")))


async def test_total_limit(fake_container: Container, unit_settings) -> None:
    unit_settings.limits.max_engines_total = 2
    factory, _ = await factory_of(fake_container)
    first = await factory.create_for_user(ctx("usr_a", "run_1"))
    second = await factory.create_for_user(ctx("usr_b", "run_2"))
    with pytest.raises(LimitExceeded, match="limit of runs"):
        await factory.create_for_user(ctx("usr_c", "run_3"))
    await factory.cleanup_engine(first)
    await factory.cleanup_engine(second)


async def test_shutdown_refuses_new_engines_and_ends_the_old(fake_container: Container) -> None:
    factory, _ = await factory_of(fake_container)
    engine = await factory.create_for_user(ctx())
    await factory.shutdown()
    assert engine.closed and factory.metrics().active == 0
    with pytest.raises(LimitExceeded, match="shutting down"):
        await factory.create_for_user(ctx(run="run_2"))


async def test_each_run_gets_a_fresh_engine_and_state(fake_container: Container) -> None:
    factory, _ = await factory_of(fake_container, ScriptedModel(answer("one"), answer("two")))
    async with factory.user_execution_scope(ctx("usr_a", "run_1")) as first:
        await first.run([])
        first_state = first.state
    async with factory.user_execution_scope(ctx("usr_b", "run_2")) as second:
        assert second is not first
        assert second.state is not first_state
        assert second.state.conversation == []
