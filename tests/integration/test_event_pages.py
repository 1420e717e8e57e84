"""The event log reads a replay a page at a time, on SQLite and PostgreSQL."""

from __future__ import annotations

from adapters.persistence.database import Database
from adapters.persistence.event_log import SqlAlchemyEventLog
from domain.events import AgentEvent, EventType
from tests.integration.test_persistence import add_thread, add_user, at


async def test_reads_take_the_first_page_after_the_point(db: Database) -> None:
    await add_user(db, "usr_a")
    await add_thread(db, "usr_a", "thr_1")
    log = SqlAlchemyEventLog(db)
    await log.start()
    try:
        stored = [await log.append(AgentEvent(type=EventType.AGENT_THINKING, user_id="usr_a",
                                              run_id="run_1", thread_id="thr_1", seq=seq, ts=at(seq),
                                              data={"text": str(seq)}))
                  for seq in range(1, 8)]
        page = await log.read_user("usr_a", stored[1].cursor, limit=3)
        assert [e.seq for e in page] == [3, 4, 5]
        assert [e.seq for e in await log.read_user("usr_a", page[-1].cursor, limit=3)] == [6, 7]
        assert [e.seq for e in await log.read_run("usr_a", "run_1", 5, limit=1)] == [6]
        assert len(await log.read_run("usr_a", "run_1")) == 7  # no limit: everything
    finally:
        await log.stop()
