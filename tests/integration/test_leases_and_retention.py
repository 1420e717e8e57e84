"""Run leases and orphan claims, event retention and migration 0002, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from adapters.persistence.database import Database
from adapters.persistence.event_log import SqlAlchemyEventLog
from adapters.persistence.repositories import SqlAlchemyRunRepository
from adapters.persistence.tables import event_log_state, metadata, runs
from adapters.persistence.threads import SqlAlchemyThreadRepository
from domain.entities import Run, RunStatus
from domain.errors import CursorExpired, InvalidMessage
from domain.events import AgentEvent, EventType
from tests.integration.conftest import migrate_to
from tests.integration.test_persistence import T0, add_thread, add_user, at

NOW = at(60)


def make_run(run_id: str, *, status: RunStatus = RunStatus.RUNNING, owner: str | None = "srv_a",
             lease: datetime | None = None, client_message_id: str | None = None) -> Run:
    return Run(id=run_id, user_id="usr_a", thread_id="thr_1", status=status, created_at=T0,
               client_message_id=client_message_id, owner=owner, lease_expires_at=lease)


@pytest.fixture
async def repo(db: Database) -> SqlAlchemyRunRepository:
    await add_user(db, "usr_a")
    await add_thread(db, "usr_a", "thr_1")
    return SqlAlchemyRunRepository(db)


async def test_runs_keep_their_owner_and_lease(repo: SqlAlchemyRunRepository) -> None:
    leased = make_run("run_1", lease=at(5), client_message_id="c1")
    bare = make_run("run_2", owner=None)
    await repo.add(leased)
    await repo.add(bare)
    assert await repo.get("usr_a", "run_1") == leased
    assert await repo.get_by_client_message_id("usr_a", "c1") == leased
    stored = await repo.get("usr_a", "run_2")
    assert stored == bare and stored.owner is None and stored.lease_expires_at is None


async def test_renew_leases_touches_only_that_owners_unfinished_runs_it_runs(
    repo: SqlAlchemyRunRepository,
) -> None:
    mine = {"run_q": RunStatus.QUEUED, "run_r": RunStatus.RUNNING, "run_c": RunStatus.COMPLETED,
            "run_f": RunStatus.FAILED, "run_x": RunStatus.CANCELLED}
    for run_id, status in mine.items():
        await repo.add(make_run(run_id, status=status, lease=at(1)))
    await repo.add(make_run("run_other", owner="srv_b", lease=at(1)))
    await repo.add(make_run("run_none", owner=None))

    await repo.add(make_run("run_idle", lease=at(1)))  # srv_a's, but no task of srv_a runs it
    held = [*mine, "run_other", "run_none"]  # what srv_a's tasks run (others are ignored)

    assert await repo.renew_leases("srv_a", at(30), held) == 2
    assert await repo.renew_leases("srv_a", at(30), []) == 0
    leases = {run_id: (await repo.get("usr_a", run_id)).lease_expires_at
              for run_id in [*mine, "run_other", "run_none", "run_idle"]}
    assert leases == {"run_q": at(30), "run_r": at(30), "run_c": at(1), "run_f": at(1),
                      "run_x": at(1), "run_other": at(1), "run_none": None, "run_idle": at(1)}
    assert await repo.renew_leases("srv_nobody", at(30), held) == 0


def take(repo: SqlAlchemyRunRepository, **kwargs: Any):
    return repo.take_over(new_owner="srv_z", until=at(120), **kwargs)


async def test_take_over_takes_only_lapsed_leases_with_the_next_epoch(repo: SqlAlchemyRunRepository) -> None:
    await repo.add(make_run("run_queued", status=RunStatus.QUEUED, lease=at(2)))
    await repo.add(make_run("run_running", lease=at(1), owner="srv_b"))
    await repo.add(make_run("run_live", lease=at(61)))
    await repo.add(make_run("run_edge", lease=NOW))  # lapses only after `now`
    await repo.add(make_run("run_unleased", owner=None))
    await repo.add(make_run("run_unleased_owned", lease=None))
    for status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED):
        await repo.add(make_run(f"run_{status.value}", status=status, lease=at(1)))

    taken = await take(repo, lapsed_before=NOW)
    assert [r.id for r in taken] == ["run_queued", "run_running"]
    for run in taken:
        # Taken, not ended: the new holder ends it (its terminal event stores the end).
        assert (run.owner, run.lease_expires_at, run.lease_epoch) == ("srv_z", at(120), 1)
        assert not run.status.is_final and run.finished_at is None
        assert await repo.get("usr_a", run.id) == run
    assert await take(repo, lapsed_before=NOW) == []
    for run_id in ("run_live", "run_edge", "run_unleased", "run_unleased_owned"):
        assert (await repo.get("usr_a", run_id)).lease_epoch == 0
    for status in (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.FAILED):
        untouched = await repo.get("usr_a", f"run_{status.value}")
        assert (untouched.status, untouched.owner, untouched.lease_epoch) == (status, "srv_a", 0)
    assert await repo.renew_leases("srv_b", at(90), ["run_running"]) == 0  # no longer srv_b's


async def test_take_over_of_a_previous_owner_takes_its_runs_whatever_their_lease(
        repo: SqlAlchemyRunRepository) -> None:
    await repo.add(make_run("run_mine", lease=at(500)))
    await repo.add(make_run("run_theirs", lease=at(500), owner="srv_b"))
    await repo.add(make_run("run_done", status=RunStatus.COMPLETED, lease=at(500)))
    assert [r.id for r in await take(repo, previous_owner="srv_a")] == ["run_mine"]


async def test_take_over_respects_the_limit(repo: SqlAlchemyRunRepository) -> None:
    for i in range(5):
        await repo.add(make_run(f"run_{i}", lease=at(10 - i)))
    assert await take(repo, lapsed_before=NOW, limit=0) == []
    assert [r.id for r in await take(repo, lapsed_before=NOW, limit=2)] == ["run_3", "run_4"]
    assert [r.id for r in await take(repo, lapsed_before=NOW, limit=2)] == ["run_1", "run_2"]
    assert [r.id for r in await take(repo, lapsed_before=NOW, limit=2)] == ["run_0"]
    assert await take(repo, lapsed_before=NOW, limit=2) == []


@pytest.mark.parametrize("limit", [100, 3])
async def test_concurrent_sweepers_take_each_orphan_exactly_once(
    db: Database, repo: SqlAlchemyRunRepository, limit: int
) -> None:
    orphans = {f"run_{i:02d}" for i in range(30)}
    for i, run_id in enumerate(sorted(orphans)):
        status = RunStatus.QUEUED if i % 2 else RunStatus.RUNNING
        await repo.add(make_run(run_id, status=status, lease=at(i % 7)))
    await repo.add(make_run("run_live", lease=at(90)))
    other_process = Database(db.url)  # its own engine, pool and (on SQLite) write lock
    try:
        sweepers = [repo, SqlAlchemyRunRepository(other_process)]
        results = await asyncio.gather(*(take(sweepers[i % 2], lapsed_before=NOW, limit=limit)
                                         for i in range(20)))
        claimed = [run.id for result in results for run in result]
        assert len(claimed) == len(set(claimed)) and claimed
        while more := await take(sweepers[0], lapsed_before=NOW, limit=limit):
            claimed += [run.id for run in more]
    finally:
        await other_process.dispose()
    assert sorted(claimed) == sorted(orphans)
    for run_id in orphans:
        assert (await repo.get("usr_a", run_id)).lease_epoch == 1
    assert (await repo.get("usr_a", "run_live")).lease_epoch == 0


def event(run_id: str, seq: int, ts: datetime, *, user_id: str = "usr_a",
          thread_id: str = "thr_1") -> AgentEvent:
    return AgentEvent(type=EventType.AGENT_MESSAGE_DELTA, user_id=user_id, run_id=run_id,
                      thread_id=thread_id, seq=seq, ts=ts, data={"delta": f"{run_id}/{seq}"})


async def test_last_seq_counts_appends_not_yet_stored(db: Database) -> None:
    log = SqlAlchemyEventLog(db)
    assert await log.last_seq("run_1") == 0  # not started: nothing can be pending
    await log.start()
    try:
        for seq in (1, 2, 3):
            await log.append(event("run_1", seq, at(seq)))
        await log.append(event("run_2", 7, at(0)))
        assert await log.last_seq("run_1") == 3

        gate, holding = asyncio.Event(), asyncio.Event()
        insert = log._insert

        async def held_insert(conn: Any, rows: list[dict[str, Any]]) -> None:
            holding.set()
            await gate.wait()
            await insert(conn, rows)

        log._insert = held_insert  # type: ignore[method-assign]
        appends = [asyncio.create_task(log.append(event("run_1", seq, at(seq))))
                   for seq in (4, 5, 6)]
        await asyncio.wait_for(holding.wait(), 10)  # the appends are in flight, held at the insert
        asking = asyncio.create_task(log.last_seq("run_1"))
        await asyncio.sleep(0.05)  # a wrong answer would come at once; a right one waits for the gate
        assert [e.seq for e in await log.read_run("usr_a", "run_1")] == [1, 2, 3]  # not stored yet
        assert not asking.done() and not any(a.done() for a in appends)
        gate.set()
        assert await asking == 6
        assert [a.result().seq for a in appends] == [4, 5, 6]
        assert await log.last_seq("run_2") == 7
        assert await log.last_seq("run_nothing") == 0
    finally:
        await log.stop()
    assert await log.last_seq("run_1") == 6


async def watermark(db: Database) -> list[tuple[str, int]]:
    async with db.reading() as conn:
        return [tuple(row) for row in await conn.execute(
            select(event_log_state.c.name, event_log_state.c.value).order_by(event_log_state.c.name))]


@pytest.mark.parametrize("prune_batch", [5000, 2])
async def test_prune_deletes_old_events_and_expires_cursors_before_it(
    db: Database, prune_batch: int
) -> None:
    log = SqlAlchemyEventLog(db, prune_batch=prune_batch)
    await log.start()
    try:
        # Append order (and so ids) interleaves old and new events.
        minutes = {"e1": 0, "e2": 1, "e3": 30, "e4": 2, "e5": 31, "e6": 3, "e7": 32}
        stored = {name: await log.append(event("run_1", i, at(m)))
                  for i, (name, m) in enumerate(minutes.items(), start=1)}
        assert await log.prune(at(-1)) == 0
        assert await watermark(db) == []
        assert await log.prune(at(10)) == 4
        assert await log.prune(at(10)) == 0
        assert await watermark(db) == [("pruned_through", int(stored["e6"].cursor))]
        kept = [stored[name] for name in ("e3", "e5", "e7")]
        assert await log.read_run("usr_a", "run_1") == kept
        assert await log.read_user("usr_a", None) == kept
        for gone in ("e1", "e3", "e5"):  # e6, after each of these cursors, is pruned
            with pytest.raises(CursorExpired, match="reload the thread"):
                await log.read_user("usr_a", stored[gone].cursor)
        with pytest.raises(CursorExpired):
            await log.read_user("usr_a", "0" * 20)
        assert await log.read_user("usr_a", stored["e6"].cursor) == [stored["e7"]]
        assert await log.read_user("usr_a", stored["e7"].cursor) == []
        assert await log.read_user("usr_b", stored["e6"].cursor) == []
        with pytest.raises(InvalidMessage):
            await log.read_user("usr_a", "not-a-cursor")
    finally:
        await log.stop()

    restarted = SqlAlchemyEventLog(db)
    with pytest.raises(CursorExpired):  # the watermark is read from the database, too
        await restarted.read_user("usr_a", stored["e5"].cursor)
    await restarted.start()
    try:
        with pytest.raises(CursorExpired):
            await restarted.read_user("usr_a", stored["e1"].cursor)
        assert await restarted.read_user("usr_a", stored["e6"].cursor) == [stored["e7"]]
        assert await restarted.prune(at(40)) == 3  # everything, so no stored id is left
        assert await watermark(db) == [("pruned_through", int(stored["e7"].cursor))]
    finally:
        await restarted.stop()

    again = SqlAlchemyEventLog(db)
    await again.start()
    try:
        later = await again.append(event("run_1", 8, at(50)))
        assert later.cursor > stored["e7"].cursor  # a pruned id is never given out again
        assert await again.read_user("usr_a", stored["e7"].cursor) == [later]
    finally:
        await again.stop()


async def test_a_prune_on_another_instance_expires_cursors_here(db: Database) -> None:
    here, there = SqlAlchemyEventLog(db), SqlAlchemyEventLog(db)
    await here.start()
    try:
        old = await here.append(event("run_1", 1, at(0)))
        new = await here.append(event("run_1", 2, at(30)))
        assert await there.prune(at(10)) == 1
        with pytest.raises(CursorExpired):
            await here.read_user("usr_a", "0" * 20)
        assert await here.read_user("usr_a", old.cursor) == [new]
    finally:
        await here.stop()


async def test_deleting_a_thread_deletes_its_events(db: Database) -> None:
    await add_user(db, "usr_a")
    await add_thread(db, "usr_a", "thr_1")
    await add_thread(db, "usr_a", "thr_2")
    log = SqlAlchemyEventLog(db)
    await log.start()
    try:
        kept = [await log.append(event("run_2", 1, at(0), thread_id="thr_2"))]
        for seq in (1, 2, 3):
            await log.append(event("run_1", seq, at(seq), thread_id="thr_1"))
        kept.append(await log.append(event("run_2", 2, at(4), thread_id="thr_2")))
        last = await log.append(event("run_1", 4, at(5), thread_id="thr_1"))

        assert await SqlAlchemyThreadRepository(db).delete("usr_b", "thr_1") is False
        assert len(await log.read_run("usr_a", "run_1")) == 4
        assert await SqlAlchemyThreadRepository(db).delete("usr_a", "thr_1") is True
        assert await log.read_run("usr_a", "run_1") == []
        assert await log.read_user("usr_a", None) == kept
        assert await log.read_user("usr_a", kept[0].cursor) == kept[1:]  # not a pruned cursor
    finally:
        await log.stop()
    assert await watermark(db) == [("deleted_through", int(last.cursor))]

    restarted = SqlAlchemyEventLog(db)
    await restarted.start()
    try:
        later = await restarted.append(event("run_2", 3, at(6), thread_id="thr_2"))
        assert later.cursor > last.cursor  # a client holding `last` must still see it
        assert await restarted.read_user("usr_a", last.cursor) == [later]
    finally:
        await restarted.stop()




async def schema(db: Database) -> dict[str, Any]:
    def read(connection: Any) -> dict[str, Any]:
        inspector = inspect(connection)
        return {
            "tables": set(inspector.get_table_names()),
            "runs": [c["name"] for c in inspector.get_columns("runs")],
            "indexes": {ix["name"] for table in ("runs", "events")
                        for ix in inspector.get_indexes(table)},
            "unique": {uq["name"] for uq in inspector.get_unique_constraints("runs")},
            "fks": {(fk["name"], fk["options"].get("ondelete"))
                    for fk in inspector.get_foreign_keys("runs")},
        }

    async with db.reading() as conn:
        return await conn.run_sync(read)


async def test_migration_0002_upgrades_and_downgrades(database: Database) -> None:
    await migrate_to(database, command.upgrade, "0001")
    before = await schema(database)
    assert "event_log_state" not in before["tables"]
    await add_user(database, "usr_a")
    await add_thread(database, "usr_a", "thr_1")
    statuses = {"run_q": "queued", "run_r": "running", "run_c": "completed", "run_f": "failed"}
    async with database.writing() as conn:
        await conn.execute(runs.insert(), [
            {"id": run_id, "user_id": "usr_a", "thread_id": "thr_1", "status": status,
             "created_at": at(i), "client_message_id": f"c{i}"}
            for i, (run_id, status) in enumerate(statuses.items())
        ])

    await migrate_to(database, command.upgrade, "head")
    after = await schema(database)
    assert after["tables"] == before["tables"] | {"event_log_state", "run_checkpoints", "approval_grants",
                                                        "mcp_servers"}
    assert after["runs"] == [*before["runs"], "owner", "lease_expires_at", "lease_epoch", "takeovers",
                             "wait_expires_at"]
    assert after["indexes"] - before["indexes"] == {
        "ix_runs_status_lease_expires_at", "ix_events_ts", "ix_events_thread_id",
        "ix_runs_thread_id_created_at", "ix_runs_user_id_status"}
    repo = SqlAlchemyRunRepository(database)
    migrated = {run_id: await repo.get("usr_a", run_id) for run_id in statuses}
    assert {run_id: (r.owner, r.lease_expires_at) for run_id, r in migrated.items()} == {
        "run_q": (None, at(0)), "run_r": (None, at(1)), "run_c": (None, None),
        "run_f": (None, None)}
    # Runs a pre-lease server left unfinished are orphans the first sweep takes (and ends).
    taken = await repo.take_over(new_owner="srv_z", until=at(120), lapsed_before=at(10))
    assert [r.id for r in taken] == ["run_q", "run_r"]
    await repo.add(Run(id="run_new", user_id="usr_a", thread_id="thr_1", status=RunStatus.RUNNING,
                       created_at=at(9), owner="srv_a", lease_expires_at=at(20)))

    await migrate_to(database, command.downgrade, "0001")
    assert await schema(database) == before
    async with database.reading() as conn:
        rows = (await conn.execute(text("SELECT id, status FROM runs ORDER BY id"))).all()
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    assert version == "0001"
    assert rows == [("run_c", "completed"), ("run_f", "failed"), ("run_new", "running"),
                    ("run_q", "queued"), ("run_r", "running")]

    await database.migrate()
    assert await schema(database) == after
    async with database.reading() as conn:
        diff = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), metadata))
    assert diff == []
