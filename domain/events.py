"""The agent events of the wire protocol and the per-run emitter that numbers them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from domain.context import UserExecutionContext
from domain.ports import Clock


class EventType(StrEnum):
    AGENT_STARTED = "agent_started"
    AGENT_THINKING = "agent_thinking"
    TOOL_EXECUTING = "tool_executing"
    TOOL_COMPLETED = "tool_completed"
    AGENT_MESSAGE_DELTA = "agent_message_delta"
    AGENT_COMPLETED = "agent_completed"
    AGENT_ERROR = "agent_error"
    AGENT_CANCELLED = "agent_cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_EVENTS


TERMINAL_EVENTS = frozenset(
    {EventType.AGENT_COMPLETED, EventType.AGENT_ERROR, EventType.AGENT_CANCELLED}
)


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One event of one run; `cursor` is set by the event log when it is stored."""

    type: EventType
    user_id: str
    run_id: str
    thread_id: str
    seq: int
    ts: datetime
    data: Mapping[str, Any]
    cursor: str | None = None

    def with_cursor(self, cursor: str) -> AgentEvent:
        return replace(self, cursor=cursor)

    def to_wire(self) -> dict[str, Any]:
        """The server frame of PROTOCOL.md; the user id stays on the server."""
        return {
            "type": self.type.value,
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "seq": self.seq,
            "cursor": self.cursor,
            "ts": self.ts.isoformat().replace("+00:00", "Z"),
            "data": dict(self.data),
        }


Publish = Callable[[AgentEvent], Awaitable[AgentEvent]]

# Events a run may have in flight (handed over, not yet stored and delivered) before emit waits.
MAX_IN_FLIGHT = 64


class RunEventEmitter:
    """Numbers one run's events gaplessly from 1 and hands them to the bridge, in order.

    Pipelined: `emit` hands the event over and returns; the bridge stores and delivers events
    in the order they were handed over. The run waits for its events only at its terminal
    event (which must not be sent before the rest are stored) and when MAX_IN_FLIGHT are
    outstanding, so a run costs its user one storage round trip, not one per event.
    """

    __slots__ = ("_clock", "_context", "_in_flight", "_publish", "_seq", "_terminal_sent")

    def __init__(self, context: UserExecutionContext, publish: Publish, clock: Clock, *,
                 after_seq: int = 0) -> None:
        self._context = context
        self._publish = publish
        self._clock = clock
        self._seq = after_seq
        self._terminal_sent = False
        self._in_flight: list[asyncio.Future[AgentEvent]] = []

    @property
    def context(self) -> UserExecutionContext:
        return self._context

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def terminal_sent(self) -> bool:
        return self._terminal_sent

    async def emit(self, type_: EventType, data: Mapping[str, Any]) -> None:
        """Hand the event over; waits only as the class says. Raises if an earlier one failed."""
        if self._terminal_sent:
            raise RuntimeError(f"run {self._context.run_id} already ended; {type_} not sent")
        if type_.is_terminal:
            self._terminal_sent = True
        self._seq += 1
        event = AgentEvent(
            type=type_,
            user_id=self._context.user_id,
            run_id=self._context.run_id,
            thread_id=self._context.thread_id,
            seq=self._seq,
            ts=self._clock.now(),
            data=data,
        )
        self._in_flight.append(asyncio.ensure_future(self._publish(event)))
        if type_.is_terminal or len(self._in_flight) >= MAX_IN_FLIGHT:
            await self.confirm()

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
