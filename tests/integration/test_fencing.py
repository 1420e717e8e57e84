"""Fencing on SQLite and PostgreSQL: only the holder of a run's lease epoch writes its events, and a
terminal event stores the run's end (status, answer) in its own transaction, or nothing at all."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from adapters.persistence.database import Database
from adapters.persistence.event_log import SqlAlchemyEventLog
from adapters.persistence.repositories import SqlAlchemyRunRepository
from adapters.persistence.tables import events
from adapters.persistence.threads import SqlAlchemyMessageRepository
from domain.entities import Role, Run, RunStatus
from domain.errors import LeaseLost, StorageUnavailable
from domain.events import AgentEvent, EventType
from tests.integration.test_persistence import T0, add_thread, add_user, at


def event(type_: EventType, seq: int, epoch: int | None, run_id: str = "run_1", **data: Any) -> AgentEvent:
    return AgentEvent(type=type_, user_id="usr_a", run_id=run_id, thread_id="thr_1", seq=seq,
                      ts=at(seq), data=data, epoch=epoch)


@pytest.fixture
async def log(db: Database) -> Any:
    await add_user(db, "usr_a")
    await add_thread(db, "usr_a", "thr_1")
    runs = SqlAlchemyRunRepository(db)
    for run_id, lease in (("run_1", at(1)), ("run_2", at(50))):
        await runs.add(Run(id=run_id, user_id="usr_a", thread_id="thr_1", status=RunStatus.RUNNING,
                           created_at=T0, owner="srv_a", lease_expires_at=lease))
    event_log = SqlAlchemyEventLog(db)
    await event_log.start()
    yield event_log, runs
    await event_log.stop()


async def stored_seqs(db: Database, run_id: str) -> list[int]:
    async with db.reading() as conn:
        query = select(events.c.seq).where(events.c.run_id == run_id).order_by(events.c.seq)
        return list((await conn.execute(query)).scalars())


async def test_after_a_takeover_the_old_holders_events_are_refused_and_the_new_ones_kept(
        db: Database, log: Any) -> None:
    event_log, runs = log
    await event_log.append(event(EventType.AGENT_STARTED, 1, 0, agent="builtin"))
    (taken,) = await runs.take_over(new_owner="srv_b", until=at(90), lapsed_before=at(5))
    assert taken.lease_epoch == 1
    with pytest.raises(LeaseLost):
        await event_log.append(event(EventType.AGENT_MESSAGE_DELTA, 2, 0, delta="late"))
    await event_log.append(event(EventType.AGENT_ERROR, 2, 1, code="interrupted", message="gone"))
    with pytest.raises(LeaseLost):  # the old holder's terminal event too: one terminal, the last
        await event_log.append(event(EventType.AGENT_COMPLETED, 3, 0, message_id="msg_late",
                                     text="late", usage={}))
    assert await stored_seqs(db, "run_1") == [1, 2]
    ended = await runs.get("usr_a", "run_1")
    assert (ended.status, ended.finished_at, ended.error) == (RunStatus.FAILED, at(2), "interrupted")
    assert await SqlAlchemyMessageRepository(db).list_for_thread("usr_a", "thr_1") == []


async def test_a_refused_event_fails_alone_its_batch_neighbours_are_stored(db: Database, log: Any) -> None:
    event_log, runs = log
    await runs.take_over(new_owner="srv_b", until=at(90), previous_owner="srv_a", limit=1)  # run_1
    results = await asyncio.gather(
        event_log.append(event(EventType.AGENT_STARTED, 1, 0, agent="builtin")),
        event_log.append(event(EventType.AGENT_STARTED, 1, 0, run_id="run_2", agent="builtin")),
        event_log.append(event(EventType.AGENT_STARTED, 1, None, run_id="run_x", agent="unfenced")),
        return_exceptions=True)
    assert isinstance(results[0], LeaseLost), results
    assert not isinstance(results[1], BaseException), results
    assert await stored_seqs(db, "run_1") == [] and await stored_seqs(db, "run_2") == [1]
    assert await stored_seqs(db, "run_x") == [1]  # an event without an epoch is not fenced


async def test_a_completed_event_stores_the_answer_and_the_status_with_it(db: Database, log: Any) -> None:
    event_log, runs = log
    usage = {"model_calls": 1}
    stored = await event_log.append(event(EventType.AGENT_COMPLETED, 1, 0, message_id="msg_answer",
                                          text="17 * 23 = 391.", usage=usage))
    assert stored.cursor is not None
    ended = await runs.get("usr_a", "run_1")
    assert (ended.status, ended.finished_at, ended.error) == (RunStatus.COMPLETED, at(1), None)
    (answer,) = await SqlAlchemyMessageRepository(db).list_for_thread("usr_a", "thr_1")
    assert (answer.id, answer.role, answer.text, answer.run_id) == (
        "msg_answer", Role.ASSISTANT, "17 * 23 = 391.", "run_1")
    with pytest.raises(LeaseLost):  # nothing after the terminal event
        await event_log.append(event(EventType.AGENT_THINKING, 2, 0, text="more"))
    cancelled = await event_log.append(event(EventType.AGENT_CANCELLED, 1, 0, run_id="run_2",
                                             reason="user"))
    assert cancelled.cursor is not None
    run_2 = await runs.get("usr_a", "run_2")
    assert (run_2.status, run_2.error) == (RunStatus.CANCELLED, "user")


async def test_an_event_that_would_leave_a_gap_is_refused(db: Database, log: Any) -> None:
    event_log, _ = log
    await event_log.append(event(EventType.AGENT_STARTED, 1, 0, agent="builtin"))
    with pytest.raises(StorageUnavailable, match="lost"):  # seq 2 was lost in an outage, say
        await event_log.append(event(EventType.AGENT_THINKING, 3, 0, text="after the gap"))
    await event_log.append(event(EventType.AGENT_THINKING, 2, 0, text="next"))
    assert await stored_seqs(db, "run_1") == [1, 2]
