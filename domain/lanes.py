"""Per-thread lanes: one run at a time per thread, the rest waiting in order (double-texting)."""

from __future__ import annotations

import asyncio
from collections import deque
from enum import StrEnum


class Multitask(StrEnum):
    """What a new message does when its thread already has a run going."""

    ENQUEUE = "enqueue"
    REJECT = "reject"
    INTERRUPT = "interrupt"


class ThreadLane:
    """FIFO turn-taking for the runs of one thread; a waiting run can be withdrawn."""

    def __init__(self) -> None:
        self.active: str | None = None
        self._waiting: deque[tuple[str, asyncio.Future[bool]]] = deque()
        self._beside: set[str] = set()  # runs going on beside the line (see RunRegistry.launch)

    @property
    def busy(self) -> bool:
        return self.active is not None or bool(self._waiting) or bool(self._beside)

    @property
    def idle(self) -> bool:
        return not self.busy

    def waiting_ids(self) -> list[str]:
        return [run_id for run_id, _ in self._waiting]

    def going_ids(self) -> list[str]:
        return [*([self.active] if self.active else []), *sorted(self._beside)]

    def join(self, run_id: str) -> asyncio.Future[bool]:
        """Take a place in line now (synchronously, so the next message sees the thread busy).

        The future is True when it is this run's turn, False when the run was withdrawn first.
        """
        turn: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self.active is None and not self._waiting:
            self.active = run_id
            turn.set_result(True)
        else:
            self._waiting.append((run_id, turn))
        return turn

    def beside(self, run_id: str) -> asyncio.Future[bool]:
        """A run that goes on beside the line: its turn is now, and nobody waits for it here."""
        self._beside.add(run_id)
        turn: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        turn.set_result(True)
        return turn

    async def wait_turn(self, run_id: str, turn: asyncio.Future[bool]) -> bool:
        try:
            return await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.result():
                self.leave(run_id)
            else:
                self._remove(run_id)
            raise

    def leave(self, run_id: str) -> None:
        if run_id in self._beside:
            self._beside.discard(run_id)
            return
        if self.active != run_id:
            return
        self.active = None
        while self._waiting:
            next_id, turn = self._waiting.popleft()
            if not turn.done():
                self.active = next_id
                turn.set_result(True)
                return

    def withdraw(self, run_id: str) -> bool:
        """Take a waiting run out of the line; it learns through enter() returning False."""
        for item in self._waiting:
            if item[0] == run_id:
                self._waiting.remove(item)
                if not item[1].done():
                    item[1].set_result(False)
                return True
        return False

    def _remove(self, run_id: str) -> None:
        self._waiting = deque(item for item in self._waiting if item[0] != run_id)
