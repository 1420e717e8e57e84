"""RunEventEmitter: numbers one run's events and hands them to the bridge, pipelined."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from domain.context import UserExecutionContext
from domain.errors import LeaseLost
from domain.events import AgentEvent, AgentMessageDelta, EventPayload
from domain.ports import Clock

Publish = Callable[[AgentEvent], Awaitable[AgentEvent]]
# The run's state once an event happened, given the seq the event gets (RunState.checkpoint).
Checkpoint = Callable[[int], Mapping[str, Any]]

# Events a run may have in flight (handed over, not yet stored and delivered) before emit waits.
MAX_IN_FLIGHT = 64


class RunEventEmitter:
    """Numbers one run's events gaplessly from 1 and hands them to the bridge, in order.

    Pipelined: `emit` hands the event over and returns; the bridge stores and delivers events
    in the order they were handed over. The run waits for its events only at its terminal
    event (which must not be sent before the rest are stored) and when MAX_IN_FLIGHT are
    outstanding, so a run costs its user one storage round trip, not one per event.

    Fenced: every event carries the lease epoch its run holds here. Once the log refuses one
    (LeaseLost: another process took the run over), `on_lease_lost` is told at once. Once any
    event failed (LeaseLost, or StorageUnavailable in an outage), every later emit raises that
    failure without publishing anything: an event stored after a lost one would leave a gap.

    Coalesced: message deltas handed over within `delta_window_s` of the first one not yet
    published become one agent_message_delta (one row, one frame), published when the window
    ends or before any other event, whichever is first. A real model streams a few characters
    per piece, tens of pieces a second; storing and sending each alone costs more than the text.
    """

    __slots__ = ("_clock", "_context", "_delta", "_delta_timer", "_delta_window_s", "_epoch",
                 "_failed", "_in_flight", "_publish", "_seq", "_terminal_sent", "on_lease_lost")

    def __init__(self, context: UserExecutionContext, publish: Publish, clock: Clock, *,
                 after_seq: int = 0, epoch: int = 0, delta_window_s: float = 0.0) -> None:
        self._context = context
        self._publish = publish
        self._clock = clock
        self._seq = after_seq
        self._epoch = epoch
        self._delta_window_s = delta_window_s
        self._delta: list[str] = []
        self._delta_timer: asyncio.TimerHandle | None = None
        self._terminal_sent = False
        self._failed: BaseException | None = None
        self._in_flight: list[asyncio.Future[AgentEvent]] = []
        self.on_lease_lost: Callable[[], None] | None = None

    @property
    def context(self) -> UserExecutionContext:
        return self._context

    @property
    def last_seq(self) -> int:
        """The seq of the last event published (a delta still in its window has none yet)."""
        return self._seq

    @property
    def terminal_sent(self) -> bool:
        return self._terminal_sent

    @property
    def lease_lost(self) -> bool:
        return isinstance(self._failed, LeaseLost)

    async def emit(self, payload: EventPayload, *, checkpoint: Checkpoint | None = None) -> None:
        """Hand the event over; waits only as the class says. Raises if an earlier one failed.

        `checkpoint`: the run's state once this event happened, stored with it (one transaction);
        called with the seq the event gets."""
        if self._failed is not None:
            raise self._failed
        if self._terminal_sent:
            raise RuntimeError(f"run {self._context.run_id} already ended; {payload.TYPE} not sent")
        if self._delta_window_s > 0 and type(payload) is AgentMessageDelta and checkpoint is None:
            self._delta.append(payload.delta)
            if self._delta_timer is None:
                self._delta_timer = asyncio.get_running_loop().call_later(self._delta_window_s,
                                                                          self._publish_delta)
            # The timer hands windows over without waiting: a long answer (deltas alone) waits
            # here, or its windows would pile up unstored without bound.
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                await self.confirm()
            return
        self._publish_delta()
        terminal = payload.TERMINAL
        if terminal:
            self._terminal_sent = True
        self._hand_over(payload, checkpoint)
        if terminal or len(self._in_flight) >= MAX_IN_FLIGHT:
            await self.confirm()

    def _publish_delta(self) -> None:
        """The deltas of the window, as one event; nothing once an event failed (a gap)."""
        if self._delta_timer is not None:
            self._delta_timer.cancel()
            self._delta_timer = None
        if not self._delta:
            return
        text, self._delta = "".join(self._delta), []
        if self._failed is None and not self._terminal_sent:
            self._hand_over(AgentMessageDelta(text), None)

    def _hand_over(self, payload: EventPayload, checkpoint: Checkpoint | None) -> None:
        self._seq += 1
        event = AgentEvent(
            type=payload.TYPE,
            user_id=self._context.user_id,
            run_id=self._context.run_id,
            thread_id=self._context.thread_id,
            seq=self._seq,
            ts=self._clock.now(),
            data=payload.data(),
            epoch=self._epoch,
            checkpoint=None if checkpoint is None else checkpoint(self._seq),
        )
        try:
            future = asyncio.ensure_future(self._publish(event))
        except Exception as failure:  # e.g. the log already stopped: no later event may follow it
            self._failed = failure
            raise
        future.add_done_callback(self._note_failure)
        self._in_flight.append(future)

    def _note_failure(self, future: asyncio.Future[AgentEvent]) -> None:
        # exception() is read for every failed event, so none is reported as never retrieved.
        if future.cancelled() or (failure := future.exception()) is None or self._failed is not None:
            return
        self._failed = failure
        if isinstance(failure, LeaseLost) and self.on_lease_lost is not None:
            self.on_lease_lost()

    async def confirm(self) -> None:
        """Wait until every event handed over is stored and delivered; raise the first failure.

        asyncio.wait, not gather: a cancel of the run while it waits must not cancel the storing
        of its events (gather would cancel them).
        """
        self._publish_delta()
        in_flight, self._in_flight = self._in_flight, []
        if not in_flight:
            return
        await asyncio.wait(in_flight)
        failures = [future.exception() for future in in_flight if not future.cancelled()]
        first = next((failure for failure in failures if failure is not None), None)
        if first is not None:
            raise first
