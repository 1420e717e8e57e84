"""Group commit (adapters/persistence/committer.py): writes share transactions, failures stay their own."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from adapters.persistence.database import Database
from adapters.persistence.repositories import SqlAlchemyRunRepository, SqlAlchemyUserRepository
from adapters.persistence.tables import messages, runs, threads
from domain.entities import Message, Role, Run, RunStatus, Thread, User
from domain.errors import Conflict

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def run_of(i: int, client_message_id: str | None = None) -> tuple[Run, Message, Thread]:
    thread = Thread(id=f"thr_{i}", user_id="usr_a", title="t", created_at=NOW, updated_at=NOW)
    run = Run(id=f"run_{i}", user_id="usr_a", thread_id=thread.id, status=RunStatus.QUEUED,
              created_at=NOW, client_message_id=client_message_id or f"cm_{i}")
    message = Message(id=f"msg_{i}", thread_id=thread.id, user_id="usr_a", role=Role.USER,
                      text=f"hello {i}", created_at=NOW, run_id=run.id)
    return run, message, thread


async def count(db: Database, table) -> int:
    async with db.reading() as conn:
        return (await conn.execute(select(func.count()).select_from(table))).scalar() or 0


@pytest.fixture
async def user_db(db: Database) -> Database:
    await SqlAlchemyUserRepository(db).add(User(id="usr_a", username="alice", password_hash="x",
                                                created_at=NOW))
    return db


async def test_concurrent_writes_share_transactions(user_db: Database) -> None:
    repo = SqlAlchemyRunRepository(user_db)
    before = user_db.committer.batches
    await asyncio.gather(*(repo.add(run, message, new_thread=thread)
                           for run, message, thread in map(run_of, range(200))))
    batches = user_db.committer.batches - before
    assert await count(user_db, runs) == 200 and await count(user_db, messages) == 200
    assert await count(user_db, threads) == 200
    # 200 writes queued together commit in a handful of transactions, not 200.
    assert batches <= 5, batches

    before = user_db.committer.batches
    await asyncio.gather(*(repo.mark_running(run.id, 0) for run, _, _ in map(run_of, range(200))))
    assert user_db.committer.batches - before <= 5  # staged UPDATEs run as executemany too
    async with user_db.reading() as conn:
        statuses = (await conn.execute(select(runs.c.status))).scalars().all()
    assert set(statuses) == {"running"}


async def test_a_failing_write_fails_alone_and_leaves_nothing_half_written(user_db: Database) -> None:
    repo = SqlAlchemyRunRepository(user_db)
    first = run_of(0, client_message_id="same")
    await repo.add(first[0], first[1], new_thread=first[2])
    duplicate = run_of(1, client_message_id="same")  # the user's client_message_id again
    others = [run_of(i) for i in range(2, 12)]
    results = await asyncio.gather(
        *(repo.add(run, message, new_thread=thread) for run, message, thread in [*others[:5], duplicate,
                                                                                  *others[5:]]),
        return_exceptions=True,
    )
    assert isinstance(results[5], Conflict)
    assert [r for i, r in enumerate(results) if i != 5] == [None] * 10
    assert await count(user_db, runs) == 11
    # The duplicate's thread and message went with it: one transaction per write.
    async with user_db.reading() as conn:
        assert (await conn.execute(select(threads.c.id).where(threads.c.id == "thr_1"))).first() is None
        assert (await conn.execute(select(messages.c.id).where(messages.c.id == "msg_1"))).first() is None


async def test_a_write_whose_caller_is_cancelled_is_still_committed(user_db: Database) -> None:
    repo = SqlAlchemyRunRepository(user_db)
    run, message, thread = run_of(0)
    task = asyncio.create_task(repo.add(run, message, new_thread=thread))
    await asyncio.sleep(0)  # queued
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await user_db.committer.flush()
    assert await count(user_db, runs) == 1 and await count(user_db, messages) == 1


async def test_a_disposed_database_refuses_writes(user_db: Database) -> None:
    repo = SqlAlchemyRunRepository(user_db)
    run, message, thread = run_of(0)
    pending = asyncio.ensure_future(repo.add(run, message, new_thread=thread))
    await asyncio.sleep(0)
    await user_db.dispose()  # commits what is queued first
    await pending
    with pytest.raises(RuntimeError):
        await repo.add(*run_of(1)[:2])
