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
from tests.helpers import DEFAULT_TIMEOUT_S, eventually

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


def emitter_for(publisher: HeldPublisher, *, delta_window_s: float = 0.0) -> RunEventEmitter:
    context = UserExecutionContext(user_id="u_1", thread_id="t_1", run_id="r_1", request_id="q_1",
                                   created_at=NOW)
    return RunEventEmitter(context, publisher.publish, FixedClock(NOW), delta_window_s=delta_window_s)


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
    await asyncio.wait_for(blocked, DEFAULT_TIMEOUT_S)  # a deadline, not a window: it ends when stored


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


# -- coalesced deltas


async def test_deltas_within_the_window_become_one_event_when_it_ends() -> None:
    publisher = HeldPublisher()
    emitter = emitter_for(publisher, delta_window_s=0.01)
    for piece in ("Hel", "lo, ", "world"):
        await emitter.emit(AgentMessageDelta(piece))
    assert publisher.handed == []  # still in the window
    await eventually(lambda: publisher.handed, what="the window's delta handed over")
    [(event, _)] = publisher.handed
    assert (event.type, event.seq, event.data) == ("agent_message_delta", 1, {"delta": "Hello, world"})


async def test_any_other_event_sends_the_waiting_deltas_first_and_its_checkpoint_gets_its_own_seq() -> None:
    publisher = HeldPublisher()
    emitter = emitter_for(publisher, delta_window_s=3600)  # only another event can end this window
    await emitter.emit(AgentStarted("a"))
    await emitter.emit(AgentMessageDelta("Let me "))
    await emitter.emit(AgentMessageDelta("check."))
    asked: list[int] = []
    await emitter.emit(AgentThinking("calling"), checkpoint=lambda seq: asked.append(seq) or {"seq": seq})
    assert [(event.seq, event.type) for event, _ in publisher.handed] == [
        (1, "agent_started"), (2, "agent_message_delta"), (3, "agent_thinking")]
    assert publisher.handed[1][0].data == {"delta": "Let me check."}
    assert asked == [3] and publisher.handed[2][0].checkpoint == {"seq": 3}


async def test_the_terminal_event_comes_after_the_waiting_deltas() -> None:
    publisher = HeldPublisher()
    emitter = emitter_for(publisher, delta_window_s=3600)
    await emitter.emit(AgentMessageDelta("All done."))
    ending = asyncio.ensure_future(emitter.emit(AgentCompleted(message_id="m", text="All done.", usage={})))
    await eventually(lambda: len(publisher.handed) == 2, what="both events handed over")
    assert [event.type for event, _ in publisher.handed] == ["agent_message_delta", "agent_completed"]
    publisher.store_all()
    await asyncio.wait_for(ending, 5)


async def test_waiting_deltas_are_dropped_once_an_event_failed() -> None:
    publisher = HeldPublisher()
    emitter = emitter_for(publisher, delta_window_s=3600)
    await emitter.emit(AgentStarted("a"))
    await emitter.emit(AgentMessageDelta("never stored"))
    publisher.store_all(failing_seq=1)
    await asyncio.sleep(0)  # the failed future's callbacks run
    with pytest.raises(RuntimeError, match="disk full"):
        await emitter.confirm()
    assert [event.seq for event, _ in publisher.handed] == [1]


async def test_with_no_window_each_delta_is_its_own_event() -> None:
    publisher = HeldPublisher()
    emitter = emitter_for(publisher)
    for piece in ("a", "b"):
        await emitter.emit(AgentMessageDelta(piece))
    assert [event.data["delta"] for event, _ in publisher.handed] == ["a", "b"]


async def test_deltas_alone_still_wait_once_too_many_of_their_windows_are_in_flight() -> None:
    # A long answer is deltas only: its windows must not pile up unstored without bound.
    publisher = HeldPublisher()
    emitter = emitter_for(publisher, delta_window_s=0.001)
    for handed in range(1, MAX_IN_FLIGHT + 1):
        await emitter.emit(AgentMessageDelta("x"))
        await eventually(lambda handed=handed: len(publisher.handed) == handed, what="the window sent")
    blocked = asyncio.create_task(emitter.emit(AgentMessageDelta("x")))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    publisher.store_all()
    await eventually(lambda: len(publisher.handed) == MAX_IN_FLIGHT + 1, what="the last window sent")
    publisher.store_all()
    await asyncio.wait_for(blocked, DEFAULT_TIMEOUT_S)  # a deadline, not a window: it ends when stored
    assert [event.seq for event, _ in publisher.handed] == list(range(1, MAX_IN_FLIGHT + 2))
