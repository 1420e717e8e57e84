"""RunEventEmitter pipelines a run's events and waits for them only where it must."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from domain.context import UserExecutionContext
from domain.emitter import MAX_IN_FLIGHT, RunEventEmitter
from domain.events import (
    AgentCancelled,
    AgentCompleted,
    AgentEvent,
    AgentMessageDelta,
    AgentStarted,
    AgentThinking,
)
from tests.fakes import FixedClock

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


class HeldPublisher:
    """Takes events in order and stores them only when the test says so."""

    def __init__(self) -> None:
        self.handed: list[tuple[AgentEvent, asyncio.Future[AgentEvent]]] = []

    def publish(self, event: AgentEvent) -> asyncio.Future[AgentEvent]:
        future: asyncio.Future[AgentEvent] = asyncio.get_running_loop().create_future()
        self.handed.append((event, future))
        return future

    def store_all(self, failing_seq: int | None = None) -> None:
        for event, future in self.handed:
            if future.done():
                continue
            if event.seq == failing_seq:
                future.set_exception(RuntimeError("disk full"))
            else:
                future.set_result(event)


def emitter_for(publisher: HeldPublisher) -> RunEventEmitter:
    context = UserExecutionContext(user_id="u_1", thread_id="t_1", run_id="r_1", request_id="q_1",
                                   created_at=NOW)
    return RunEventEmitter(context, publisher.publish, FixedClock(NOW))


async def test_events_are_handed_over_in_order_without_waiting() -> None:
    publisher = HeldPublisher()
    emitter = emitter_for(publisher)
    for _ in range(5):
        await asyncio.wait_for(emitter.emit(AgentMessageDelta("x")), 1)  # nothing is ever stored
    assert [event.seq for event, _ in publisher.handed] == [1, 2, 3, 4, 5]


async def test_the_terminal_event_waits_until_every_event_is_stored() -> None:
    publisher = HeldPublisher()
    emitter = emitter_for(publisher)
    await emitter.emit(AgentStarted("builtin"))
    ending = asyncio.create_task(emitter.emit(AgentCompleted(message_id="msg_1", text="hi", usage={})))
    await asyncio.sleep(0.01)
    assert not ending.done()
    publisher.store_all()
    await asyncio.wait_for(ending, 1)


async def test_an_earlier_failure_surfaces_when_the_run_waits() -> None:
    publisher = HeldPublisher()
    emitter = emitter_for(publisher)
    await emitter.emit(AgentStarted("builtin"))
    await emitter.emit(AgentThinking("..."))
    ending = asyncio.create_task(emitter.emit(AgentCompleted(message_id="msg_1", text="hi", usage={})))
    await asyncio.sleep(0)
    publisher.store_all(failing_seq=2)
    with pytest.raises(RuntimeError, match="disk full"):
        await ending


async def test_a_run_waits_once_too_many_events_are_in_flight() -> None:
    publisher = HeldPublisher()
    emitter = emitter_for(publisher)
    for _ in range(MAX_IN_FLIGHT - 1):
        await emitter.emit(AgentMessageDelta("x"))
    blocked = asyncio.create_task(emitter.emit(AgentMessageDelta("x")))
    await asyncio.sleep(0.01)
    assert not blocked.done()  # bounded: a fast model cannot queue events without limit
    publisher.store_all()
    await asyncio.wait_for(blocked, 1)


async def test_a_cancelled_run_does_not_cancel_the_storing_of_its_events() -> None:
    publisher = HeldPublisher()
    emitter = emitter_for(publisher)
    await emitter.emit(AgentStarted("builtin"))
    ending = asyncio.create_task(emitter.emit(AgentCancelled("user")))
    await asyncio.sleep(0)
    ending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ending
    assert not any(future.cancelled() for _, future in publisher.handed)
