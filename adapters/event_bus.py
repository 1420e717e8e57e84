"""Event buses carry a user's serialised events to every process that holds that user's sockets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Envelope:
    """One stored event, serialised once, with what a subscriber needs to route and de-duplicate it."""

    user_id: str
    run_id: str
    seq: int
    cursor: str
    terminal: bool
    frame: str


Deliver = Callable[[Envelope], None]


class EventBus(Protocol):
    async def start(self, deliver: Deliver) -> None: ...

    async def publish(self, envelope: Envelope) -> None: ...

    async def stop(self) -> None: ...


class InMemoryEventBus:
    """The embedded default: one process, so publishing is delivering."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def publish(self, envelope: Envelope) -> None:
        if self._deliver is not None:
            self._deliver(envelope)

    async def stop(self) -> None:
        self._deliver = None
