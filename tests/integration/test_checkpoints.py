"""Checkpoints on SQLite and PostgreSQL: stored with the event they follow, in its transaction;
the latest one wins; a fenced-off writer's checkpoint is refused with its event; a keyed note
is saved once."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from adapters.persistence.database import Database
from adapters.persistence.notes import SqlAlchemyNoteRepository
from domain.entities import Note
from domain.errors import LeaseLost
from domain.events import EventType
from tests.integration import test_fencing
from tests.integration.test_fencing import event
from tests.integration.test_persistence import T0, add_user

log = test_fencing.log  # the fixture: the event log and runs of test_fencing


def checkpoint(seq: int, answer: str) -> dict[str, Any]:
    return {"format": 1, "seq": seq, "conversation": [], "tool_calls": [], "steps": seq,
            "answer": [answer], "usage": {}, "pending": [], "in_flight": None}


async def test_the_latest_checkpoint_is_stored_with_its_event_and_read_back(db: Database, log: Any) -> None:
    event_log, _ = log
    assert await event_log.checkpoint("run_1") is None
    await event_log.append(event(EventType.AGENT_STARTED, 1, 0, agent="builtin"))
    first = event_log.submit(replace(event(EventType.TOOL_EXECUTING, 2, 0, tool_call_id="c", tool="t",
                                           arguments={}), checkpoint=checkpoint(2, "a")))
    second = event_log.submit(replace(event(EventType.TOOL_COMPLETED, 3, 0, tool_call_id="c", tool="t",
                                            result=1, duration_ms=1), checkpoint=checkpoint(3, "b")))
    await first, await second
    assert await event_log.checkpoint("run_1") == checkpoint(3, "b")
    assert await event_log.checkpoint("run_2") is None


async def test_a_fenced_off_writers_checkpoint_is_refused_with_its_event(db: Database, log: Any) -> None:
    event_log, runs = log
    await event_log.append(replace(event(EventType.AGENT_STARTED, 1, 0, agent="builtin"),
                                   checkpoint=checkpoint(1, "mine")))
    await runs.take_over(new_owner="srv_b", until=T0.replace(year=2100), lapsed_before=T0.replace(year=2100))
    with pytest.raises(LeaseLost):
        await event_log.append(replace(event(EventType.TOOL_EXECUTING, 2, 0, tool_call_id="c", tool="t",
                                             arguments={}), checkpoint=checkpoint(2, "late")))
    assert await event_log.checkpoint("run_1") == checkpoint(1, "mine")


async def test_a_keyed_note_is_saved_once(db: Database) -> None:
    await add_user(db, "usr_a")
    await add_user(db, "usr_b")
    notes = SqlAlchemyNoteRepository(db)
    def note(note_id: str, user_id: str) -> Note:
        return Note(id=note_id, user_id=user_id, text="my code is 12", created_at=T0, key="run:c1")

    first, again, other = [await notes.add(note(*n)) for n in
                           (("note_1", "usr_a"), ("note_2", "usr_a"), ("note_3", "usr_b"))]
    assert again.id == first.id == "note_1" and other.id == "note_3"
    assert [n.id for n in await notes.search("usr_a", "code")] == ["note_1"]



async def test_the_same_keyed_note_saved_by_two_processes_at_once_is_saved_once(db: Database) -> None:
    # A takeover re-running a call while its stalled first runner wakes and runs it too: two
    # database handles. This does not force the interleaving (both read, then both insert) that
    # made a read-then-insert fail a whole batch on the unique index; ON CONFLICT rules it out.
    await add_user(db, "usr_a")
    other = Database(db.url)
    try:
        stores = [SqlAlchemyNoteRepository(db), SqlAlchemyNoteRepository(other)]
        saved = await asyncio.gather(*(store.add(Note(id=f"note_{i}", user_id="usr_a", created_at=T0,
                                                      text="my code is 12", key="run:c1"))
                                       for i, store in enumerate(stores)))
    finally:
        await other.dispose()
    assert saved[0].id == saved[1].id
    assert len(await stores[0].search("usr_a", "code")) == 1
