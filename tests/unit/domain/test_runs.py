"""RunRegistry: lanes, pending counts, the one cancel, the run timeout, drain and outcome counts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from container import Container
from domain.entities import Run, RunStatus
from domain.runs import RunRegistry
from tests.helpers import eventually

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def run(run_id: str, thread_id: str = "thr_1", user_id: str = "usr_a") -> Run:
    return Run(id=run_id, user_id=user_id, thread_id=thread_id, status=RunStatus.QUEUED, created_at=NOW)


class Script:
    """Run bodies that record when they start and end only when told to."""

    def __init__(self, registry: RunRegistry) -> None:
        self.registry = registry
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}

    async def execute(self, r: Run) -> None:
        self.started.append(r.id)
        self.registry.start_clock(r.id)  # as ChatService does when the run's engine starts
        release = self.release.setdefault(r.id, asyncio.Event())
        if self.registry.cancel_requested(r.id) is None:
            waiter = asyncio.ensure_future(release.wait())
            while not waiter.done() and self.registry.cancel_requested(r.id) is None:
                await asyncio.wait([waiter], timeout=0.01)
            waiter.cancel()
        self.registry.ended(r, RunStatus.COMPLETED if release.is_set() else RunStatus.CANCELLED, None)

    def finish(self, run_id: str) -> None:
        self.release.setdefault(run_id, asyncio.Event()).set()


async def registry_of(container: Container) -> tuple[RunRegistry, Script]:
    registry = await container.run_registry()
    return registry, Script(registry)


async def test_a_thread_runs_one_at_a_time_in_order_and_everything_is_released_at_the_end(
        fake_container: Container) -> None:
    registry, script = await registry_of(fake_container)
    assert registry.launch(run("run_1"), script.execute) is True
    assert registry.launch(run("run_2"), script.execute) is False  # same thread: waits its turn
    assert registry.launch(run("run_3", thread_id="thr_2"), script.execute) is True
    assert registry.thread_busy("thr_1") and registry.pending("usr_a") == 3 and registry.active == 3
    await eventually(lambda: script.started == ["run_1", "run_3"], what="two threads start at once")
    script.finish("run_1")
    await eventually(lambda: "run_2" in script.started, what="the queued run gets its turn")
    script.finish("run_2")
    script.finish("run_3")
    await eventually(lambda: registry.active == 0, what="every run ends")
    assert not registry.thread_busy("thr_1") and registry.pending("usr_a") == 0
    assert registry.outcomes()["completed"] == 3


async def test_cancel_is_the_one_way_to_stop_a_run_and_the_first_reason_wins(
        fake_container: Container) -> None:
    registry, script = await registry_of(fake_container)
    registry.launch(run("run_1"), script.execute)
    registry.launch(run("run_2"), script.execute)
    assert registry.cancel("run_2", "user") and registry.cancel("run_2", "shutdown")
    assert registry.cancel_requested("run_2") == "user"
    # A waiting run that is cancelled leaves the line at once and still runs its body, to end.
    await eventually(lambda: "run_2" in script.started, what="the withdrawn run ends")
    assert not registry.cancel("run_unknown", "user")
    registry.cancel("run_1", "user")
    await eventually(lambda: registry.active == 0, what="both runs end")
    assert registry.outcomes()["cancelled"] == 2


async def test_interrupt_cancels_the_waiting_and_the_going_runs_of_the_thread_only(
        fake_container: Container) -> None:
    registry, script = await registry_of(fake_container)
    for r in (run("run_1"), run("run_2"), run("run_3", thread_id="thr_2")):
        registry.launch(r, script.execute)
    registry.interrupt("thr_1")
    assert registry.cancel_requested("run_1") == registry.cancel_requested("run_2") == "interrupted"
    assert registry.cancel_requested("run_3") is None
    script.finish("run_3")
    await eventually(lambda: registry.active == 0, what="every run ends")


async def test_a_run_that_outlives_its_timeout_is_cancelled_with_reason_timeout(
        fake_container: Container, unit_settings) -> None:
    unit_settings.limits.run_timeout_s = 0.05
    registry, script = await registry_of(fake_container)
    registry.launch(run("run_1"), script.execute)
    await eventually(lambda: registry.cancel_requested("run_1") == "timeout" or registry.active == 0,
                     what="the timeout fires")
    await eventually(lambda: registry.active == 0, what="the run ends")
    assert registry.outcomes()["cancelled"] == 1


async def test_drain_refuses_new_runs_waits_the_grace_then_cancels_with_shutdown(
        fake_container: Container) -> None:
    registry, script = await registry_of(fake_container)
    registry.launch(run("run_1"), script.execute)
    await registry.drain(0.01)
    assert not registry.accepting and registry.active == 0
    assert registry.outcomes()["cancelled"] == 1
