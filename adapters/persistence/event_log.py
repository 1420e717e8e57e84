"""The durable event log on SQL: appends are group-committed, cursors follow append order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from loguru import logger
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from adapters.persistence.database import Database
from adapters.persistence.tables import events
from domain.errors import InvalidMessage
from domain.events import AgentEvent, EventType

CURSOR_DIGITS = 20
MAX_BATCH = 500

_Item = tuple[AgentEvent, dict[str, Any], "asyncio.Future[AgentEvent]"]


def encode_cursor(event_id: int) -> str:
    """Zero-padded, so cursors compare as text the way their ids compare as numbers."""
    return f"{event_id:0{CURSOR_DIGITS}d}"


def decode_cursor(cursor: str) -> int:
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= CURSOR_DIGITS):
        raise InvalidMessage("That is not a cursor this server gave out.")
    return int(cursor)


def _event(row: Any) -> AgentEvent:
    return AgentEvent(
        type=EventType(row.type), user_id=row.user_id, run_id=row.run_id,
        thread_id=row.thread_id, seq=row.seq, ts=row.ts, data=json.loads(row.data),
        cursor=encode_cursor(row.id),
    )


class SqlAlchemyEventLog:
    """One writer task stores whatever is queued in one transaction, so many runs cost few commits.

    Ids are numbered here, not by the database, so they follow append order and each batch
    commits after the one before: a reader's cursor never passes an event not yet visible.
    That holds for one writing process per database.
    """

    def __init__(self, db: Database, *, max_batch: int = MAX_BATCH) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._last_id = 0

    async def start(self) -> None:
        if self._task is not None:
            return
        async with self._db.reading() as conn:
            self._last_id = (await conn.execute(select(func.max(events.c.id)))).scalar() or 0
        self._task = asyncio.create_task(self._write_forever(), name="event-log-writer")

    async def stop(self) -> None:
        """Stores everything appended so far, then stops the writer."""
        task, self._task = self._task, None
        if task is not None:
            self._queue.put_nowait(None)
            await task

    async def append(self, event: AgentEvent) -> AgentEvent:
        if self._task is None:
            raise RuntimeError("the event log is not started")
        if event.ts.tzinfo is None:
            raise ValueError(f"event ts must be timezone-aware, not {event.ts!r}")
        # Everything that can be wrong with one event fails here, not its whole batch.
        row = {
            "user_id": event.user_id, "run_id": event.run_id, "thread_id": event.thread_id,
            "seq": event.seq, "type": EventType(event.type).value, "ts": event.ts,
            "data": json.dumps(dict(event.data), ensure_ascii=False, separators=(",", ":")),
        }
        future: asyncio.Future[AgentEvent] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, row, future))
        return await future

    async def read_run(self, user_id: str, run_id: str, after_seq: int = 0) -> list[AgentEvent]:
        query = (select(events)
                 .where(events.c.user_id == user_id, events.c.run_id == run_id,
                        events.c.seq > after_seq)
                 .order_by(events.c.seq))
        async with self._db.reading() as conn:
            return [_event(row) for row in await conn.execute(query)]

    async def read_user(self, user_id: str, after_cursor: str | None) -> list[AgentEvent]:
        after = 0 if after_cursor is None else decode_cursor(after_cursor)
        query = (select(events)
                 .where(events.c.user_id == user_id, events.c.id > after)
                 .order_by(events.c.id))
        async with self._db.reading() as conn:
            return [_event(row) for row in await conn.execute(query)]

    async def _write_forever(self) -> None:
        while True:
            batch: list[_Item] = []
            item = await self._queue.get()
            while item is not None:
                batch.append(item)
                if len(batch) >= self._max_batch or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            if batch:
                await self._flush(batch)
            if item is None:
                return

    async def _flush(self, batch: list[_Item]) -> None:
        rows = [{**row, "id": self._next_id()} for _, row, _ in batch]
        try:
            await self._insert(rows)
        except IntegrityError as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            # One bad event (a repeated seq) must not fail the others that shared its commit.
            for row, item in zip(rows, batch, strict=True):
                await self._flush_alone(row, item)
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            _fail(batch, exc)
        else:
            _resolve(rows, batch)

    async def _flush_alone(self, row: dict[str, Any], item: _Item) -> None:
        try:
            await self._insert([row])
        except Exception as exc:
            _fail([item], exc)
        else:
            _resolve([row], [item])

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        async with self._db.writing() as conn:
            await conn.execute(insert(events), rows)

    def _next_id(self) -> int:
        self._last_id += 1
        return self._last_id


def _resolve(rows: list[dict[str, Any]], batch: list[_Item]) -> None:
    for row, (event, _, future) in zip(rows, batch, strict=True):
        if not future.done():
            future.set_result(event.with_cursor(encode_cursor(row["id"])))


def _fail(batch: list[_Item], exc: Exception) -> None:
    """Appenders get the error instead of waiting forever; the writer carries on."""
    logger.opt(exception=exc).error("could not store {} event(s)", len(batch))
    for *_, future in batch:
        if not future.done():
            future.set_exception(exc)
