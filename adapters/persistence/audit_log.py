"""The audit trail on SQL: `record` only queues; a background task writes in batches."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from loguru import logger
from sqlalchemy import insert, select

from adapters.persistence.database import Database
from adapters.persistence.tables import audit_log
from domain.model import AuditAction, AuditEntry

MAX_BATCH = 500
MAX_QUEUED = 10_000

# A flush request travels the queue as a future, behind every entry recorded before it.
_Item = AuditEntry | asyncio.Future[None] | None


class SqlAlchemyAuditLog:
    def __init__(
        self, db: Database, *, max_batch: int = MAX_BATCH, max_queued: int = MAX_QUEUED
    ) -> None:
        self._db = db
        self._max_batch = max_batch
        self._max_queued = max_queued
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._dropped = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._write_forever(), name="audit-log-writer")

    async def stop(self) -> None:
        """Writes everything recorded so far, then stops the writer."""
        task, self._task = self._task, None
        if task is not None:
            self._queue.put_nowait(None)
            await task

    def record(self, entry: AuditEntry) -> None:
        # Auditing must not take the server down with it: past the bound, entries are dropped.
        if self._queue.qsize() >= self._max_queued:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                logger.warning("audit log queue full; {} entries dropped", self._dropped)
            return
        self._queue.put_nowait(entry)

    async def flush(self) -> None:
        """Returns once every entry recorded before the call is written (or failed to be)."""
        if self._task is None:
            while not self._queue.empty():
                await self._process(self._queue.get_nowait())
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(done)
        await done

    async def list(
        self, *, user_id: str | None = None, limit: int = 100
    ) -> Sequence[AuditEntry]:
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if user_id is not None:
            query = query.where(audit_log.c.user_id == user_id)
        async with self._db.reading() as conn:
            rows = await conn.execute(query)
            return [
                AuditEntry(user_id=row.user_id, action=AuditAction(row.action), at=row.at,
                           run_id=row.run_id, outcome=row.outcome, detail=row.detail)
                for row in rows
            ]

    async def _write_forever(self) -> None:
        while await self._process(await self._queue.get()):
            pass

    async def _process(self, first: _Item) -> bool:
        """Writes `first` and what is queued behind it, up to a batch; False at the stop mark."""
        items = [first]
        while len(items) < self._max_batch and not self._queue.empty():
            items.append(self._queue.get_nowait())
        entries = [item for item in items if isinstance(item, AuditEntry)]
        if entries:
            await self._insert(entries)
        for item in items:
            if isinstance(item, asyncio.Future) and not item.done():
                item.set_result(None)
        return all(item is not None for item in items)

    async def _insert(self, entries: list[AuditEntry]) -> None:
        try:
            rows = [
                {"user_id": e.user_id, "action": AuditAction(e.action).value, "run_id": e.run_id,
                 "outcome": e.outcome, "detail": e.detail, "at": e.at}
                for e in entries
            ]
            async with self._db.writing() as conn:
                await conn.execute(insert(audit_log), rows)
        except Exception:
            logger.exception("could not write {} audit entries; they are lost", len(entries))
