"""Reading and deleting a user's own threads, messages and runs; another user's are not found."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from domain.entities import Message, Role, Run, Thread
from domain.errors import NotFound, ThreadBusy, ValidationFailed
from domain.events import AgentEvent
from domain.ports import Clock, EventLog, IdGenerator, MessageRepository, RunRepository, ThreadRepository

MAX_TITLE_CHARS = 200
MAX_PAGE = 200
Position = tuple[datetime, str]  # (a time, an id): where a page ends, for the next one


@dataclass(frozen=True, slots=True)
class ThreadPage:
    threads: list[Thread]
    after: Position | None  # where the next page starts; None: this was the last


@dataclass(frozen=True, slots=True)
class TimelineItem:
    """A message of the thread, and for a user's message its run with every event it had."""

    message: Message
    run: Run | None = None
    events: list[AgentEvent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Timeline:
    items: list[TimelineItem]  # oldest first
    before: Position | None  # where the next (older) page ends; None: this was the first


class ConversationService:
    def __init__(
        self,
        *,
        threads: ThreadRepository,
        messages: MessageRepository,
        runs: RunRepository,
        events: EventLog,
        ids: IdGenerator,
        clock: Clock,
    ) -> None:
        self._threads = threads
        self._messages = messages
        self._runs = runs
        self._events = events
        self._ids = ids
        self._clock = clock

    async def threads(self, user_id: str, *, query: str | None = None, after: Position | None = None,
                      limit: int = 100) -> ThreadPage:
        """A page of the user's threads, the most recently updated first; with `query`, those whose
        title or messages hold it."""
        limit = max(1, min(limit, MAX_PAGE))
        found = list(await self._threads.page(user_id, query=(query or "").strip() or None, after=after,
                                              limit=limit + 1))
        page = found[:limit]
        return ThreadPage(page, (page[-1].updated_at, page[-1].id) if len(found) > limit else None)

    async def rename(self, user_id: str, thread_id: str, title: str) -> Thread:
        title = " ".join(title.split())
        if not title or len(title) > MAX_TITLE_CHARS:
            raise ValidationFailed(f"'title': 1 to {MAX_TITLE_CHARS} characters, not only spaces.")
        renamed = await self._threads.rename(user_id, thread_id, title)
        if renamed is None:
            raise NotFound("There is no such thread.")
        return renamed

    async def fork(self, user_id: str, thread_id: str, message_id: str) -> tuple[Thread, Message]:
        """A new thread holding the history before one of the thread's user messages (to edit that
        message and send it again there); returns it and that message."""
        thread = await self._threads.get(user_id, thread_id)
        if thread is None:
            raise NotFound("There is no such thread.")
        history = list(await self._messages.list_for_thread(user_id, thread_id))
        at = next((i for i, m in enumerate(history) if m.id == message_id and m.role is Role.USER), None)
        if at is None:
            raise NotFound("That thread has no message of yours with that id.")
        now = self._clock.now()
        fork = Thread(id=self._ids.new_id("thr"), user_id=user_id, title=_forked_title(thread.title),
                      created_at=now, updated_at=now)
        copies = [replace(m, id=self._ids.new_id("msg"), thread_id=fork.id) for m in history[:at]]
        await self._threads.add_fork(fork, copies)
        return fork, history[at]

    async def timeline(self, user_id: str, thread_id: str, *, before: Position | None = None,
                       limit: int = 50) -> Timeline:
        """The thread as it was seen live, a page of messages at a time from the end: each user's
        message with its run and all of that run's events (one read of each kind per page)."""
        if await self._threads.get(user_id, thread_id) is None:
            raise NotFound("There is no such thread.")
        limit = max(1, min(limit, MAX_PAGE))
        found = list(await self._messages.page(user_id, thread_id, before=before, limit=limit + 1))
        page = list(reversed(found[:limit]))
        run_ids = {m.run_id for m in page if m.role is Role.USER and m.run_id is not None}
        runs = {run.id: run for run in await self._runs.get_many(user_id, run_ids)}
        events: dict[str, list[AgentEvent]] = {}
        for event in await self._events.read_runs(user_id, list(runs)):
            events.setdefault(event.run_id, []).append(event)
        items = [TimelineItem(m, runs.get(m.run_id or ""), events.get(m.run_id or "", []))
                 if m.role is Role.USER else TimelineItem(m) for m in page]
        return Timeline(items, (page[0].created_at, page[0].id) if len(found) > limit else None)

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


def _forked_title(title: str) -> str:
    edited = f"{title} (edited)"
    return edited if len(edited) <= MAX_TITLE_CHARS else title[: MAX_TITLE_CHARS - 10].rstrip() + "… (edited)"
