"""GroupCommitter's failure rules, scripted: a data error fails alone, an outage fails the batch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from adapters.persistence.committer import GroupCommitter, Transaction


class ScriptedDatabase:
    """Counts transactions; each fails with `error` if a 'bad' piece is in it (any, if `outage`)."""

    def __init__(self, error: Exception, *, outage: bool) -> None:
        self.error = error
        self.outage = outage
        self.transactions = 0
        self.committed: list[str] = []

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        self.transactions += 1
        staged: list[str] = []
        self.current = staged
        yield self
        if self.outage or "bad" in staged:
            raise self.error
        self.committed.extend(staged)


def piece(db: ScriptedDatabase, name: str):
    async def work(tx: Transaction) -> str:
        db.current.append(name)
        return name

    return work


async def run_batch(db: ScriptedDatabase, names: list[str]) -> list[Any]:
    committer = GroupCommitter(db.transaction)
    committer.start()
    try:
        futures = [committer.submit(piece(db, name)) for name in names]
        return await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await committer.stop()


async def test_a_data_error_fails_its_own_piece_only() -> None:
    db = ScriptedDatabase(IntegrityError("INSERT", {}, Exception("duplicate")), outage=False)
    results = await run_batch(db, ["a", "bad", "c"])
    assert results[0] == "a" and results[2] == "c" and isinstance(results[1], IntegrityError)
    assert db.committed == ["a", "c"]
    assert db.transactions == 1 + 3  # the shared one, then each piece alone


async def test_an_outage_fails_the_whole_batch_at_once() -> None:
    db = ScriptedDatabase(OperationalError("BEGIN", {}, ConnectionRefusedError()), outage=True)
    results = await run_batch(db, ["a", "b", "c", "d"])
    assert all(isinstance(r, OperationalError) for r in results)
    assert db.transactions == 1  # not once more per piece: an outage would be waited for each time


@pytest.mark.parametrize("error", [OSError("connection reset"), TimeoutError()])
async def test_a_lost_connection_is_an_outage_too(error: Exception) -> None:
    db = ScriptedDatabase(error, outage=True)
    results = await run_batch(db, ["a", "b"])
    assert [type(r) for r in results] == [type(error)] * 2 and db.transactions == 1


async def test_an_outage_is_a_warning_every_few_seconds_with_its_count_and_one_when_it_ends() -> None:
    from loguru import logger

    from adapters.persistence.committer import _OutageLog

    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="WARNING")
    try:
        outage = _OutageLog()
        for _ in range(50):  # 50 batches failing within one interval: one line
            outage.note(10, ConnectionRefusedError())
        outage.over()
        outage.over()  # nothing failed since: no second line
    finally:
        logger.remove(sink)
    assert lines == ["the database is away (ConnectionRefusedError): 10 writes failed so far",
                     "the database answers again; 500 writes failed while it was away"]
