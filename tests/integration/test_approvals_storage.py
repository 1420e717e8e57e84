"""Approvals in storage, on SQLite and PostgreSQL: a run that asks waits from the transaction that
stores its question (no owner, no lease, a deadline); one claim of a waiting run wins, with its
checkpoint and its grant in the same transaction or not at all; lapsed questions are claimed by
one sweeper each; standing grants are each user's own."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from adapters.persistence.database import Database
from adapters.persistence.event_log import SqlAlchemyEventLog
from adapters.persistence.grants import SqlAlchemyApprovalGrantRepository, add_grant
from adapters.persistence.repositories import SqlAlchemyRunRepository
from adapters.persistence.tables import events
from adapters.persistence.threads import SqlAlchemyThreadRepository
from domain.approval_policy import iso
from domain.entities import ApprovalGrant, Run, RunStatus
from domain.errors import LeaseLost
from domain.events import AgentEvent, EventType
from tests.integration.test_persistence import T0, add_thread, add_user, at

TOOL = "delete_notes"
WAIT_UNTIL = at(30)  # a question's deadline, unless a test names another


def event(type_: EventType, seq: int, epoch: int | None, run_id: str, *, user_id: str = "usr_a",
          thread_id: str = "thr_1", **data: Any) -> AgentEvent:
    return AgentEvent(type=type_, user_id=user_id, run_id=run_id, thread_id=thread_id, seq=seq,
                      ts=at(seq / 60), data=data, epoch=epoch)


def state(seq: int, *, awaiting: dict[str, Any] | None = None,
          decisions: dict[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint as RunState.checkpoint() writes it (format 2)."""
    return {"format": 2, "seq": seq, "conversation": [], "tool_calls": [], "steps": 1, "answer": [],
            "usage": {}, "pending": [{"id": "call_1", "name": TOOL, "arguments": "{}"}],
            "in_flight": None, "awaiting": awaiting, "decisions": decisions or {}}


def question(expires: datetime, call_id: str = "call_1") -> dict[str, Any]:
    return {"tool_call_id": call_id, "tool": TOOL, "arguments": {"query": "locker code"},
            "expires_at": iso(expires)}


def decided(claimer: str) -> dict[str, Any]:
    return state(3, decisions={"call_1": {"approved": True, "by": "user", "reason": claimer,
                                          "announced": False}})


def grant(grant_id: str, *, user_id: str = "usr_a", thread_id: str | None = None, tool: str = TOOL,
          minutes: float = 0) -> ApprovalGrant:
    return ApprovalGrant(id=grant_id, user_id=user_id, tool=tool, created_at=at(minutes), thread_id=thread_id)


class Store:
    """The run repository and the event log on one database, with runs made to wait as the agent
    loop makes them: started by srv_a at epoch 0, then approval_required with its checkpoint."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.runs = SqlAlchemyRunRepository(db)
        self.log = SqlAlchemyEventLog(db)
        self.grants = SqlAlchemyApprovalGrantRepository(db)

    async def running(self, run_id: str, *, user_id: str = "usr_a", thread_id: str = "thr_1") -> None:
        await self.runs.add(Run(id=run_id, user_id=user_id, thread_id=thread_id, status=RunStatus.RUNNING,
                                created_at=T0, owner="srv_a", lease_expires_at=at(1)))
        await self.log.append(event(EventType.AGENT_STARTED, 1, 0, run_id, user_id=user_id,
                                    thread_id=thread_id, agent="builtin"))

    async def ask(self, run_id: str, expires: datetime, *, user_id: str = "usr_a",
                  thread_id: str = "thr_1", epoch: int = 0) -> AgentEvent:
        asked = question(expires)
        return await self.log.append(replace(
            event(EventType.APPROVAL_REQUIRED, 2, epoch, run_id, user_id=user_id, thread_id=thread_id,
                  **asked),
            checkpoint=state(2, awaiting=asked)))

    async def waiting(self, run_id: str, expires: datetime = WAIT_UNTIL, **owner: str) -> None:
        await self.running(run_id, **owner)
        await self.ask(run_id, expires, **owner)

    async def run(self, run_id: str, user_id: str = "usr_a") -> Run:
        found = await self.runs.get(user_id, run_id)
        assert found is not None, run_id
        return found


@pytest.fixture
async def store(db: Database) -> Any:
    for user_id in ("usr_a", "usr_b"):
        await add_user(db, user_id)
    await add_thread(db, "usr_a", "thr_1")
    await add_thread(db, "usr_a", "thr_2")
    await add_thread(db, "usr_b", "thr_b")
    made = Store(db)
    await made.log.start()
    yield made
    await made.log.stop()


@pytest.fixture
async def other_process(db: Database) -> Any:
    """A second handle on the same database: its own engine, pool and (on SQLite) write lock."""
    other = Database(db.url)
    try:
        yield other
    finally:
        await other.dispose()


async def stored_types(db: Database, run_id: str) -> list[str]:
    async with db.reading() as conn:
        query = select(events.c.type).where(events.c.run_id == run_id).order_by(events.c.seq)
        return list((await conn.execute(query)).scalars())


# -- approval_required makes the run wait, in the event's transaction -----------------------------


async def test_approval_required_stored_makes_the_run_wait_with_no_owner_and_no_lease(store: Store) -> None:
    seen_with_the_event: list[Run] = []

    async def listener(batch: list[AgentEvent]) -> None:
        # The fan-out gets the event once its transaction committed: the run waits by then.
        for stored in batch:
            if stored.type is EventType.APPROVAL_REQUIRED:
                seen_with_the_event.append(await store.run(stored.run_id))

    store.log.listen(listener)
    await store.running("run_1")
    before = await store.run("run_1")
    assert (before.status, before.owner, before.wait_expires_at) == (RunStatus.RUNNING, "srv_a", None)
    stored = await store.ask("run_1", at(30))
    assert stored.cursor is not None
    run = await store.run("run_1")
    assert run.status is RunStatus.WAITING
    assert (run.owner, run.lease_expires_at, run.wait_expires_at) == (None, None, at(30))
    assert (run.lease_epoch, run.finished_at, run.error) == (0, None, None)
    assert seen_with_the_event == [run]
    assert (await store.log.checkpoint("run_1"))["awaiting"] == question(at(30))
    assert await store.runs.waiting_for_user("usr_a") == [run]
    assert await store.runs.waiting_in_thread("usr_a", "thr_1") == [run]
    assert await store.runs.waiting_in_thread("usr_a", "thr_2") == []
    assert await store.runs.waiting_for_user("usr_b") == []
    # Nothing to renew, nothing to take over: a waiting run holds no lease.
    assert await store.runs.renew_leases("srv_a", at(90), ["run_1"]) == 0
    assert await store.runs.take_over(new_owner="srv_z", until=at(120), lapsed_before=at(10_000)) == []
    assert await store.runs.take_over(new_owner="srv_a", until=at(120), previous_owner="srv_a") == []
    assert await store.runs.count_unfinished("usr_a") == 0  # not counted against the user's runs going
    assert await store.run("run_1") == run


async def test_a_refused_approval_required_leaves_the_run_as_it_was(store: Store) -> None:
    # The holder lost the run (taken over) before its question was stored: the event, the
    # checkpoint and the status change are refused together.
    await store.running("run_1")
    (taken,) = await store.runs.take_over(new_owner="srv_b", until=at(90), lapsed_before=at(5))
    with pytest.raises(LeaseLost):
        await store.ask("run_1", at(30), epoch=0)
    run = await store.run("run_1")
    assert run == taken and run.status is RunStatus.RUNNING and run.wait_expires_at is None
    assert await stored_types(store.db, "run_1") == ["agent_started"]
    assert await store.log.checkpoint("run_1") is None


async def test_a_terminal_event_ends_a_waiting_run(store: Store) -> None:
    await store.waiting("run_1")
    await store.waiting("run_2")
    # Straight from waiting (the asker's epoch, never claimed)...
    await store.log.append(event(EventType.AGENT_CANCELLED, 3, 0, "run_1", reason="user"))
    run_1 = await store.run("run_1")
    assert (run_1.status, run_1.error, run_1.finished_at) == (RunStatus.CANCELLED, "user", at(3 / 60))
    assert await store.runs.waiting_for_user("usr_a") == [await store.run("run_2")]
    # ...and as the claimer ends it: the claim's epoch is the one that may write.
    claimed = await store.runs.claim_waiting("run_2", owner="srv_b", until=at(90))
    assert claimed is not None and claimed.lease_epoch == 1
    with pytest.raises(LeaseLost):  # the epoch it waited at is fenced off
        await store.log.append(event(EventType.AGENT_CANCELLED, 3, 0, "run_2", reason="user"))
    await store.log.append(event(EventType.AGENT_CANCELLED, 3, 1, "run_2", reason="approval_timeout"))
    run_2 = await store.run("run_2")
    assert (run_2.status, run_2.error) == (RunStatus.CANCELLED, "approval_timeout")
    assert await store.runs.waiting_for_user("usr_a") == []
    # An ended run is claimed by nobody.
    assert await store.runs.claim_waiting("run_1", owner="srv_b", until=at(90)) is None
    assert await store.runs.claim_expired_waiting(owner="srv_b", now=at(10_000), until=at(10_001)) == []


# -- claim_waiting: one winner, its checkpoint and grant with it ------------------------------------


async def test_two_concurrent_claims_one_wins_with_its_checkpoint_and_grant(
        store: Store, other_process: Database) -> None:
    rounds = 8
    for i in range(rounds):
        await store.waiting(f"run_{i}")
    claimers = [("srv_a", store.runs), ("srv_b", SqlAlchemyRunRepository(other_process))]
    winners: list[str] = []
    for i in range(rounds):
        run_id = f"run_{i}"
        # Each claimer's own decision and grant: the winner's are the ones stored. Decisions
        # claim with their deadline (unexpired_at), cancels without one: half the rounds each.
        claims = await asyncio.gather(*(
            repo.claim_waiting(run_id, owner=name, until=at(90), checkpoint=decided(name),
                               grant=grant(f"grant_{i}_{name}", thread_id="thr_1" if name == "srv_a"
                                           else None),
                               unexpired_at=at(10) if i < rounds // 2 else None)
            for name, repo in (claimers if i % 2 else claimers[::-1])))
        won = [claim for claim in claims if claim is not None]
        assert len(won) == 1, claims
        winner = won[0]
        winners.append(winner.owner or "")
        assert (winner.status, winner.lease_epoch, winner.lease_expires_at, winner.wait_expires_at) == (
            RunStatus.RUNNING, 1, at(90), None)
        assert await store.run(run_id) == winner
        stored = await store.log.checkpoint(run_id)
        assert stored == decided(winner.owner or ""), stored
        grants = await store.grants.list_for_user("usr_a")
        assert [g.id for g in grants] == [f"grant_{i}_{winner.owner}"], grants
        for each in grants:  # one grant at a time: the next round's claims start with none
            assert await store.grants.delete("usr_a", each.id)
    print(f"claim winners over {rounds} races: {winners}")


async def test_a_claim_that_loses_stores_neither_checkpoint_nor_grant(store: Store) -> None:
    await store.waiting("run_1")
    first = await store.runs.claim_waiting("run_1", owner="srv_a", until=at(90), checkpoint=decided("srv_a"))
    assert first is not None and first.lease_epoch == 1
    again = await store.runs.claim_waiting("run_1", owner="srv_b", until=at(91), checkpoint=decided("srv_b"),
                                           grant=grant("grant_late", thread_id=None))
    assert again is None
    assert await store.run("run_1") == first  # its epoch and lease are the first claimer's
    assert await store.log.checkpoint("run_1") == decided("srv_a")
    assert await store.grants.list_for_user("usr_a") == []
    assert await store.runs.claim_waiting("run_nope", owner="srv_b", until=at(91),
                                          grant=grant("grant_nope")) is None
    assert await store.grants.list_for_user("usr_a") == []


async def test_a_claim_whose_grant_cannot_be_stored_claims_nothing(store: Store) -> None:
    await store.waiting("run_1")
    # A grant of another tool under an id taken already: its insert fails, so the claim rolls back.
    await store.db.write(lambda conn: add_grant(conn, grant("grant_1", tool="calculator")))
    with pytest.raises(IntegrityError):
        await store.runs.claim_waiting("run_1", owner="srv_a", until=at(90), checkpoint=decided("srv_a"),
                                       grant=grant("grant_1"))
    run = await store.run("run_1")
    assert (run.status, run.owner, run.lease_epoch, run.wait_expires_at) == (
        RunStatus.WAITING, None, 0, at(30))
    assert (await store.log.checkpoint("run_1"))["awaiting"] == question(at(30))
    assert [g.tool for g in await store.grants.list_for_user("usr_a")] == ["calculator"]


async def test_a_claim_after_the_question_lapsed_returns_none(store: Store) -> None:
    await store.waiting("run_1", expires=at(30))
    for late in (at(30), at(31)):  # at the deadline is too late already
        assert await store.runs.claim_waiting("run_1", owner="srv_a", until=at(90), unexpired_at=late,
                                              checkpoint=decided("srv_a"), grant=grant("grant_1")) is None
    run = await store.run("run_1")
    assert (run.status, run.lease_epoch) == (RunStatus.WAITING, 0)
    assert (await store.log.checkpoint("run_1"))["awaiting"] == question(at(30))
    assert await store.grants.list_for_user("usr_a") == []
    claimed = await store.runs.claim_waiting("run_1", owner="srv_a", until=at(90), unexpired_at=at(29))
    assert claimed is not None and claimed.status is RunStatus.RUNNING
    # Without a checkpoint the stored one stays (a cancel claims, and ends the run as it stands).
    assert (await store.log.checkpoint("run_1"))["awaiting"] == question(at(30))


# -- claim_expired_waiting: only lapsed questions, each by one sweeper -----------------------------


async def test_claim_expired_waiting_claims_only_the_lapsed(store: Store) -> None:
    await store.waiting("run_early", expires=at(10))
    await store.waiting("run_due", expires=at(30))
    await store.waiting("run_later", expires=at(40))
    await store.running("run_going")  # its lease lapsed long ago: the housekeeper's, not this
    await store.waiting("run_b", expires=at(5), user_id="usr_b", thread_id="thr_b")
    taken = await store.runs.claim_expired_waiting(owner="srv_z", now=at(30), until=at(31))
    assert sorted(run.id for run in taken) == ["run_b", "run_due", "run_early"]
    for run in taken:
        assert (run.status, run.owner, run.lease_expires_at, run.lease_epoch, run.wait_expires_at) == (
            RunStatus.RUNNING, "srv_z", at(31), 1, None)
    assert (await store.run("run_later")).status is RunStatus.WAITING
    going = await store.run("run_going")
    assert (going.status, going.owner, going.lease_epoch) == (RunStatus.RUNNING, "srv_a", 0)
    assert await store.runs.claim_expired_waiting(owner="srv_y", now=at(30), until=at(31)) == []
    assert [run.id for run in await store.runs.claim_expired_waiting(owner="srv_y", now=at(40),
                                                                     until=at(41), limit=5)] == ["run_later"]
    assert await store.runs.claim_expired_waiting(owner="srv_y", now=at(40), until=at(41), limit=0) == []


@pytest.mark.parametrize("limit", [100, 3])
async def test_concurrent_sweepers_never_claim_the_same_lapsed_run(
        db: Database, store: Store, limit: int) -> None:
    # Four handles on the database, as four processes: each its own writer, so up to four
    # claiming transactions at once; a few rounds, so they overlap however the scheduler runs them.
    handles = [db] + [Database(db.url) for _ in range(3)]
    try:
        sweepers = [SqlAlchemyRunRepository(handle) for handle in handles]
        for round_ in range(4):
            lapsed = {f"run_{round_}_{i:02d}" for i in range(20)}
            for i, run_id in enumerate(sorted(lapsed)):
                await store.waiting(run_id, expires=at(i % 5))
            await store.waiting(f"run_{round_}_open", expires=at(60))
            results = await asyncio.gather(*(
                sweepers[i % 4].claim_expired_waiting(owner=f"srv_{i % 4}", now=at(30), until=at(31),
                                                      limit=limit)
                for i in range(12)))
            claimed = [run.id for result in results for run in result]
            assert claimed and len(claimed) == len(set(claimed)), sorted(claimed)
            for _ in range(len(lapsed) + 1):  # a sweep that claims the same runs again fails, not hangs
                more = await sweepers[1].claim_expired_waiting(owner="srv_1", now=at(30), until=at(31),
                                                               limit=limit)
                if not more:
                    break
                claimed += [run.id for run in more]
            assert not more
            assert sorted(claimed) == sorted(lapsed)
            for run_id in lapsed:
                run = await store.run(run_id)
                assert (run.status, run.lease_epoch) == (RunStatus.RUNNING, 1), run
            assert (await store.run(f"run_{round_}_open")).status is RunStatus.WAITING
    finally:
        for handle in handles[1:]:
            await handle.dispose()


# -- standing grants, per user ------------------------------------------------------------------------


async def test_grants_cover_list_and_delete_per_user(store: Store) -> None:
    grants = store.grants
    for each in (grant("g_thread", thread_id="thr_1", minutes=1),
                 grant("g_always", tool="calculator", minutes=2),
                 grant("g_b", user_id="usr_b", thread_id=None, minutes=3)):
        await store.db.write(lambda conn, each=each: add_grant(conn, each))
    # A thread grant covers its tool in its thread only; an always grant every thread.
    assert await grants.covers("usr_a", TOOL, "thr_1")
    assert not await grants.covers("usr_a", TOOL, "thr_2")
    assert await grants.covers("usr_a", "calculator", "thr_1")
    assert await grants.covers("usr_a", "calculator", "thr_2")
    assert not await grants.covers("usr_a", "save_note", "thr_1")
    # Another user's grant covers nothing of usr_a, and usr_a's nothing of usr_b.
    assert await grants.covers("usr_b", TOOL, "thr_b") and await grants.covers("usr_b", TOOL, "thr_1")
    assert not await grants.covers("usr_b", "calculator", "thr_b")
    assert await grants.list_for_user("usr_a") == [grant("g_thread", thread_id="thr_1", minutes=1),
                                                   grant("g_always", tool="calculator", minutes=2)]
    assert await grants.list_for_user("usr_b") == [grant("g_b", user_id="usr_b", minutes=3)]
    # The same grant again: the first stays.
    await store.db.write(lambda conn: add_grant(conn, grant("g_thread_again", thread_id="thr_1", minutes=9)))
    assert [g.id for g in await grants.list_for_user("usr_a")] == ["g_thread", "g_always"]
    # Deleting is by the owner only.
    assert not await grants.delete("usr_b", "g_thread")
    assert not await grants.delete("usr_a", "g_b")
    assert await grants.covers("usr_b", TOOL, "thr_b")
    assert [g.id for g in await grants.list_for_user("usr_a")] == ["g_thread", "g_always"]
    assert await grants.delete("usr_a", "g_thread")
    assert not await grants.delete("usr_a", "g_thread")
    assert not await grants.covers("usr_a", TOOL, "thr_1")
    assert [g.id for g in await grants.list_for_user("usr_a")] == ["g_always"]
    assert [g.id for g in await grants.list_for_user("usr_b")] == ["g_b"]


async def test_deleting_a_thread_deletes_its_thread_grants_only(store: Store) -> None:
    for each in (grant("g_1", thread_id="thr_1"), grant("g_2", thread_id="thr_2"),
                 grant("g_all", tool="calculator"), grant("g_b", user_id="usr_b", thread_id="thr_b")):
        await store.db.write(lambda conn, each=each: add_grant(conn, each))
    await store.waiting("run_1")  # a waiting run in the thread goes with it
    assert await SqlAlchemyThreadRepository(store.db).delete("usr_a", "thr_1")
    assert [g.id for g in await store.grants.list_for_user("usr_a")] == ["g_2", "g_all"]
    assert [g.id for g in await store.grants.list_for_user("usr_b")] == ["g_b"]
    assert await store.runs.waiting_for_user("usr_a") == []
    assert await store.runs.claim_waiting("run_1", owner="srv_a", until=at(90)) is None
