"""Event buses carry a user's serialised events to every process that holds that user's sockets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Envelope:
    """One stored event, serialised once, with what a subscriber needs to route and de-duplicate it."""

    user_id: str
    run_id: str
    seq: int
    cursor: str
    type: str
    terminal: bool
    frame: str


def encode(envelope: Envelope) -> str:
    return json.dumps(asdict(envelope), separators=(",", ":"))


def decode(payload: str | bytes) -> Envelope:
    return Envelope(**json.loads(payload))


class BusListener(Protocol):
    """What a bus reports to: each envelope, and the loss and return of its connection."""

    def deliver(self, envelope: Envelope) -> None: ...

    def bus_lost(self) -> None: ...

    async def bus_restored(self) -> None: ...


class EventBus(Protocol):
    async def start(self, listener: BusListener) -> None: ...

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        """To every process's listener, in order."""
        ...

    async def stop(self) -> None: ...


class InMemoryEventBus:
    """The embedded default: one process, so publishing is delivering."""

    def __init__(self) -> None:
        self._listener: BusListener | None = None

    async def start(self, listener: BusListener) -> None:
        self._listener = listener

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        if self._listener is not None:
            for envelope in envelopes:
                self._listener.deliver(envelope)

    async def stop(self) -> None:
        self._listener = None
