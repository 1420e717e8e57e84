"""Event buses carry a user's serialised events to every process that holds that user's sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Deliver = Callable[[str, str], None]


class EventBus(Protocol):
    async def start(self, deliver: Deliver) -> None: ...

    async def publish(self, user_id: str, frame: str) -> None: ...

    async def stop(self) -> None: ...


class InMemoryEventBus:
    """The embedded default: one process, so publishing is delivering."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def publish(self, user_id: str, frame: str) -> None:
        if self._deliver is not None:
            self._deliver(user_id, frame)

    async def stop(self) -> None:
        self._deliver = None
