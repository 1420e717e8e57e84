"""The audit trail on SQL: `record` only queues; the database's group commit writes the entries."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial

from loguru import logger
from sqlalchemy import insert, select

from adapters.persistence.committer import Transaction
from adapters.persistence.connection import is_database_outage
from adapters.persistence.database import Database
from adapters.persistence.tables import audit_log
from domain.entities import AuditAction, AuditEntry

MAX_QUEUED = 10_000
AUDIT_RANK = 9  # after the rows the entries mention
_INSERT_AUDIT = insert(audit_log)


class SqlAlchemyAuditLog:
    """`record` only queues: entries ride the database's next group commit, many per statement."""

    def __init__(self, db: Database, *, max_queued: int = MAX_QUEUED) -> None:
        self._db = db
        self._max_queued = max_queued
        self._batch: list[AuditEntry] | None = None  # entries waiting for the next commit
        self._dropped = 0

    async def start(self) -> None:
        """Nothing to start: the database's committer writes."""

    async def stop(self) -> None:
        """Writes everything recorded so far."""
        await self.flush()

    def record(self, entry: AuditEntry) -> None:
        if self._batch is None:
            batch: list[AuditEntry] = []
            try:
                self._db.write_soon(partial(self._insert, batch)).add_done_callback(_report)
            except RuntimeError:  # the database is closed: the server is stopping
                logger.warning("audit entry after shutdown dropped: {}", entry.action)
                return
            self._batch = batch
        # Auditing must not take the server down with it: past the bound, entries are dropped.
        if len(self._batch) >= self._max_queued:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                logger.warning("audit log queue full; {} entries dropped", self._dropped)
            return
        self._batch.append(entry)

    async def flush(self) -> None:
        """Returns once every entry recorded before the call is written (or failed to be)."""
        await self._db.committer.flush()

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

    async def _insert(self, batch: list[AuditEntry], tx: Transaction) -> None:
        if batch is self._batch:
            self._batch = None  # entries recorded from now on go in the next batch
        for e in batch:
            tx.stage(_INSERT_AUDIT, {"user_id": e.user_id, "action": AuditAction(e.action).value,
                                     "run_id": e.run_id, "outcome": e.outcome, "detail": e.detail,
                                     "at": e.at}, rank=AUDIT_RANK)


def _report(written: asyncio.Future[None]) -> None:
    if written.cancelled() or (exc := written.exception()) is None:
        return
    if is_database_outage(exc):  # the committer logs the outage once per batch
        logger.warning("audit entries lost while the database was away")
    else:
        logger.opt(exception=exc).error("could not write audit entries; they are lost")
