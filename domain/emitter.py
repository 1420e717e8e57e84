"""RunEventEmitter: numbers one run's events and hands them to the bridge, pipelined."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from domain.context import UserExecutionContext
from domain.errors import LeaseLost
from domain.events import AgentEvent, EventPayload
from domain.ports import Clock

Publish = Callable[[AgentEvent], Awaitable[AgentEvent]]

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
    """

    __slots__ = ("_clock", "_context", "_epoch", "_failed", "_in_flight", "_publish", "_seq",
                 "_terminal_sent", "on_lease_lost")

    def __init__(self, context: UserExecutionContext, publish: Publish, clock: Clock, *,
                 after_seq: int = 0, epoch: int = 0) -> None:
        self._context = context
        self._publish = publish
        self._clock = clock
        self._seq = after_seq
        self._epoch = epoch
        self._terminal_sent = False
        self._failed: BaseException | None = None
        self._in_flight: list[asyncio.Future[AgentEvent]] = []
        self.on_lease_lost: Callable[[], None] | None = None

    @property
    def context(self) -> UserExecutionContext:
        return self._context

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def terminal_sent(self) -> bool:
        return self._terminal_sent

    @property
    def lease_lost(self) -> bool:
        return isinstance(self._failed, LeaseLost)

    async def emit(self, payload: EventPayload, *, checkpoint: Mapping[str, Any] | None = None) -> None:
        """Hand the event over; waits only as the class says. Raises if an earlier one failed.

        `checkpoint`: the run's state once this event happened, stored with it (one transaction)."""
        if self._failed is not None:
            raise self._failed
        if self._terminal_sent:
            raise RuntimeError(f"run {self._context.run_id} already ended; {payload.TYPE} not sent")
        terminal = payload.TERMINAL
        if terminal:
            self._terminal_sent = True
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
            checkpoint=checkpoint,
        )
        future = asyncio.ensure_future(self._publish(event))
        future.add_done_callback(self._note_failure)
        self._in_flight.append(future)
        if terminal or len(self._in_flight) >= MAX_IN_FLIGHT:
            await self.confirm()

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
        in_flight, self._in_flight = self._in_flight, []
        if not in_flight:
            return
        await asyncio.wait(in_flight)
        failures = [future.exception() for future in in_flight if not future.cancelled()]
        first = next((failure for failure in failures if failure is not None), None)
        if first is not None:
            raise first
