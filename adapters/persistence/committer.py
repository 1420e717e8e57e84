"""GroupCommitter: the writes of this process share transactions, one writer task commits them.

A run writes a handful of rows (its run, its message, its events, its end, audit entries). In
one transaction each, 100 concurrent users meant thousands of commits a second queued on
SQLite's one writer. Here every write is a piece of work queued to one task, which runs all
the work queued meanwhile in one transaction and commits once: the more load, the larger the
batch, the fewer the commits (docs/performance.md has the measurements).

Pieces of work stage their rows (`Transaction.stage`): a statement staged by many pieces runs
once with all their rows. Participants (the event log) keep rows of their own during the batch
and write them with one statement before the commit (`before_commit`), forget them if the batch
rolls back (`discard`), and act once it is durable (`after_commit`: fan the stored events out).

A failing piece of work (a unique constraint, say) must not fail the others that shared its
transaction: the batch is rolled back and each piece is run again in a transaction of its own,
so the failure reaches only its own caller. An outage of the database (unreachable, timed out)
fails the whole batch at once instead: rerunning each piece alone would wait for it each time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from loguru import logger
from sqlalchemy.engine import Dialect, Result

from adapters.persistence.connection import SqlConnection, is_database_outage

T = TypeVar("T")
Work = Callable[["Transaction"], Awaitable[T]]
MAX_BATCH = 1000

# A flush travels the queue as an item without work: resolved once everything before it is done.
_Item = tuple[Work[Any] | None, "asyncio.Future[Any]"]


class Transaction:
    """A batch's transaction as its pieces of work see it: statements run now, or are staged.

    `stage` queues a row for a statement; at the end of the batch (or before the next statement
    that runs now, so the order of effects holds) each staged statement runs once with all its
    rows (executemany), in `rank` order (a table's rank after the tables it references), so
    100 runs' messages cost one INSERT and, on PostgreSQL, one round trip.
    """

    __slots__ = ("_conn", "_staged")

    def __init__(self, conn: SqlConnection) -> None:
        self._conn = conn
        self._staged: dict[tuple[int, int], tuple[Any, list[dict[str, Any]]]] = {}

    @property
    def dialect(self) -> Dialect:
        return self._conn.dialect

    def stage(self, statement: Any, row: dict[str, Any], *, rank: int) -> None:
        key = (rank, id(statement))
        staged = self._staged.get(key)
        if staged is None:
            self._staged[key] = (statement, [row])
        else:
            staged[1].append(row)

    async def flush(self) -> None:
        if self._staged:
            staged, self._staged = self._staged, {}
            for key in sorted(staged, key=lambda key: key[0]):  # stable: equal ranks keep their order
                statement, rows = staged[key]
                await self._conn.execute(statement, rows)

    async def execute(self, statement: Any, parameters: Any = None) -> Result[Any]:
        await self.flush()
        return await self._conn.execute(statement, parameters)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        await self.flush()
        return await self._conn.run_sync(fn, *args)


class _OutageLog:
    """An outage is a warning a few seconds apart with how many writes it failed, not a line (or a
    traceback) per write, and one line when the database answers again."""

    INTERVAL_S = 5.0

    def __init__(self) -> None:
        self._failed = 0
        self._last_line = 0.0

    def note(self, writes: int, exc: BaseException) -> None:
        now = asyncio.get_running_loop().time()
        first = self._failed == 0
        self._failed += writes
        if first or now - self._last_line >= self.INTERVAL_S:
            logger.warning("the database is away ({}): {} writes failed so far", type(exc).__name__,
                           self._failed)
            self._last_line = now

    def over(self) -> None:
        if self._failed:
            logger.warning("the database answers again; {} writes failed while it was away", self._failed)
            self._failed = 0


class BatchParticipant(Protocol):
    async def before_commit(self, conn: SqlConnection) -> None: ...

    def discard(self) -> None: ...

    async def after_commit(self) -> None: ...


class GroupCommitter:
    """One writer task; every piece of work queued meanwhile goes into its next transaction."""

    def __init__(
        self, transaction: Callable[[], AbstractAsyncContextManager[SqlConnection]], *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._transaction_of = transaction
        self._max_batch = max_batch
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._participants: list[BatchParticipant] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._outage = _OutageLog()
        self.batches = 0  # transactions committed
        self.writes = 0  # pieces of work they committed

    def join(self, participant: BatchParticipant) -> None:
        self._participants.append(participant)

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._write_forever(), name="group-committer")

    async def stop(self) -> None:
        """Commits everything submitted so far, then stops the writer."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            self._wakeup.set()
            await task

    def submit(self, work: Work[T]) -> asyncio.Future[T]:
        """Queue `work`; the future holds its result once its transaction committed."""
        return self._enqueue(work)

    def _enqueue(self, work: Work[Any] | None) -> asyncio.Future[Any]:
        if self._task is None:
            raise RuntimeError("the group committer is not started")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((work, future))
        self._wakeup.set()
        return future

    async def flush(self) -> None:
        """Returns once everything submitted before the call is committed (or failed)."""
        if self._task is not None:
            await self._enqueue(None)

    async def _write_forever(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            taken = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
            batch = [item for item in taken if item[0] is not None]
            try:
                if batch:
                    await self._commit(batch)
            except asyncio.CancelledError:
                for _, future in taken:
                    future.cancel()
                raise
            for work, future in taken:
                if work is None and not future.done():
                    future.set_result(None)

    async def _commit(self, batch: list[_Item]) -> None:
        try:
            results = await self._transaction(batch)
        except Exception as exc:
            # An outage fails every piece at once: alone, each would wait for it again.
            if len(batch) > 1 and not is_database_outage(exc):
                for item in batch:
                    await self._commit([item])
                return
            if is_database_outage(exc):
                self._outage.note(len(batch), exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self.batches += 1
        self.writes += len(batch)
        self._outage.over()
        for participant in self._participants:
            try:
                await participant.after_commit()
            except Exception:
                logger.exception("after-commit step of {} failed", type(participant).__name__)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _transaction(self, batch: list[_Item]) -> list[Any]:
        try:
            async with self._transaction_of() as conn:
                tx = Transaction(conn)
                results = [await work(tx) for work, _ in batch if work is not None]
                await tx.flush()
                for participant in self._participants:
                    await participant.before_commit(tx)
        except BaseException:
            for participant in self._participants:
                participant.discard()
            raise
        return results

