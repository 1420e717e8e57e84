"""Several processes appending to one event log: cursors stay unique and a tailing reader skips nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from adapters.persistence.database import Database
from adapters.persistence.event_log import SqlAlchemyEventLog
from domain.events import AgentEvent, EventType

PER_WRITER = 150


def event(run_id: str, seq: int) -> AgentEvent:
    return AgentEvent(type=EventType.AGENT_THINKING, user_id="usr_shared", run_id=run_id,
                      thread_id="thr_1", seq=seq, ts=datetime.now(UTC), data={"text": f"{seq}"})


async def test_two_writers_and_a_tailing_reader(db: Database) -> None:
    # A second Database on the same URL stands in for a second server process.
    other = Database(db.url)
    logs = [SqlAlchemyEventLog(db), SqlAlchemyEventLog(other)]
    for log in logs:
        await log.start()
    done = asyncio.Event()
    seen: list[str] = []

    async def write(log: SqlAlchemyEventLog, run_id: str) -> None:
        for seq in range(1, PER_WRITER + 1):
            await log.append(event(run_id, seq))

    async def tail() -> None:
        cursor = None
        while True:
            finished = done.is_set()
            for found in await logs[0].read_user("usr_shared", cursor):
                seen.append(found.cursor or "")
                cursor = found.cursor
            if finished:
                return
            await asyncio.sleep(0)

    reader = asyncio.create_task(tail())
    try:
        await asyncio.gather(*(write(logs[i % 2], f"run_{i}") for i in range(4)))
        done.set()
        await reader
        stored = [e.cursor for e in await logs[1].read_user("usr_shared", None)]
        assert len(stored) == len(set(stored)) == 4 * PER_WRITER
        assert seen == stored, "the tailing reader skipped or repeated an event"
        for i in range(4):
            seqs = [e.seq for e in await logs[0].read_run("usr_shared", f"run_{i}")]
            assert seqs == list(range(1, PER_WRITER + 1))
    finally:
        for log in logs:
            await log.stop()
        await other.dispose()
