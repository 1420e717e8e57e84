"""Reading and deleting a user's own threads, messages and runs; another user's are not found."""

from __future__ import annotations

from collections.abc import Sequence

from domain.entities import Message, Run, Thread
from domain.errors import NotFound, ThreadBusy
from domain.events import AgentEvent
from domain.ports import EventLog, MessageRepository, RunRepository, ThreadRepository


class ConversationService:
    def __init__(
        self,
        *,
        threads: ThreadRepository,
        messages: MessageRepository,
        runs: RunRepository,
        events: EventLog,
    ) -> None:
        self._threads = threads
        self._messages = messages
        self._runs = runs
        self._events = events

    async def threads(self, user_id: str) -> Sequence[Thread]:
        return await self._threads.list_for_user(user_id)

    async def messages(self, user_id: str, thread_id: str) -> Sequence[Message]:
        if await self._threads.get(user_id, thread_id) is None:
            raise NotFound("There is no such thread.")
        return await self._messages.list_for_thread(user_id, thread_id)

    async def run(self, user_id: str, run_id: str) -> Run:
        run = await self._runs.get(user_id, run_id)
        if run is None:
            raise NotFound("There is no such run.")
        return run

    async def run_events(self, user_id: str, run_id: str, after_seq: int = 0,
                         limit: int | None = None) -> list[AgentEvent]:
        await self.run(user_id, run_id)
        return await self._events.read_run(user_id, run_id, after_seq, limit)

    async def events_after_cursor(self, user_id: str, cursor: str, limit: int | None = None
                                  ) -> list[AgentEvent]:
        """The user's events after the cursor (the first `limit`); CursorExpired if some were pruned."""
        return await self._events.read_user(user_id, cursor, limit)

    async def delete_thread(self, user_id: str, thread_id: str, *, busy: bool) -> None:
        if await self._threads.get(user_id, thread_id) is None:
            raise NotFound("There is no such thread.")
        if busy:
            raise ThreadBusy("This thread has a run going; cancel it before deleting the thread.")
        await self._threads.delete(user_id, thread_id)
