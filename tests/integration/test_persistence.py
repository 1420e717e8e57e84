"""The SQL persistence adapter against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Table, func, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

from adapters.persistence.audit_log import SqlAlchemyAuditLog
from adapters.persistence.database import Database, alembic_config
from adapters.persistence.event_log import SqlAlchemyEventLog
from adapters.persistence.notes import SqlAlchemyNoteRepository
from adapters.persistence.repositories import (
    SqlAlchemyRunRepository,
    SqlAlchemyUserRepository,
)
from adapters.persistence.tables import messages, metadata, runs, threads
from adapters.persistence.threads import SqlAlchemyMessageRepository, SqlAlchemyThreadRepository
from domain.entities import (
    AuditAction,
    AuditEntry,
    Message,
    Note,
    Role,
    Run,
    RunStatus,
    Thread,
    User,
)
from domain.errors import Conflict
from domain.events import AgentEvent, EventType

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
TABLES = {"users", "threads", "messages", "runs", "events", "notes", "audit_log", "event_log_state",
          "run_checkpoints", "approval_grants", "mcp_servers"}


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def add_user(db: Database, user_id: str) -> User:
    user = User(id=user_id, username=f"name-{user_id}", password_hash="h", created_at=T0)
    await SqlAlchemyUserRepository(db).add(user)
    return user


async def insert_rows(db: Database, table: Table, *rows: dict[str, Any]) -> None:
    """Rows written straight into a table: the repositories write threads and messages only
    together with a run, and these tests want them alone."""

    async def insert_them(tx: Any) -> None:
        await tx.execute(insert(table), list(rows))

    await db.write(insert_them)


async def add_thread(db: Database, user_id: str, thread_id: str, minutes: float = 0) -> Thread:
    thread = Thread(id=thread_id, user_id=user_id, title="t", created_at=at(minutes),
                    updated_at=at(minutes))
    await insert_rows(db, threads, {"id": thread.id, "user_id": user_id, "title": thread.title,
                                    "created_at": thread.created_at, "updated_at": thread.updated_at})
    return thread


async def table_names(db: Database) -> set[str]:
    async with db.reading() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_migrate_creates_every_table_and_twice_is_a_no_op(database: Database) -> None:
    assert not await table_names(database) & TABLES
    await database.migrate()
    assert await table_names(database) == TABLES | {"alembic_version"}
    await add_user(database, "usr_a")
    await database.migrate()
    assert await SqlAlchemyUserRepository(database).get("usr_a") is not None
    async with database.reading() as conn:
        assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).all() == [
            ("0008",)
        ]


async def test_database_settings(db: Database) -> None:
    assert db.dialect in {"sqlite", "postgresql"}
    if db.dialect == "sqlite":
        async with db.reading() as conn:
            pragmas = [(await conn.execute(text(f"PRAGMA {name}"))).scalar()
                       for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")]
        assert pragmas == ["wal", 1, 2000, 1]


async def test_nothing_connects_before_first_use(tmp_path: Path) -> None:
    unreachable = Database("postgresql+asyncpg://nobody@127.0.0.1:1/nothing")
    assert unreachable.dialect == "postgresql"
    await unreachable.dispose()
    sqlite = Database(f"sqlite+aiosqlite:///{tmp_path / 'a' / 'b' / 'x.db'}")
    assert (tmp_path / "a" / "b").is_dir() and not (tmp_path / "a" / "b" / "x.db").exists()
    await sqlite.dispose()


async def test_migrations_create_exactly_the_tables_module(db: Database) -> None:
    async with db.reading() as conn:
        diff = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), metadata)
        )
    assert diff == []


async def test_downgrade_to_base_drops_everything(db: Database) -> None:
    def downgrade(connection: object) -> None:
        config = alembic_config(db.url)
        config.attributes["connection"] = connection
        command.downgrade(config, "base")

    async with db.writing() as conn:
        await conn.run_sync(downgrade)
    assert not await table_names(db) & TABLES
    await db.migrate()
    assert await table_names(db) >= TABLES


async def test_users(db: Database) -> None:
    users = SqlAlchemyUserRepository(db)
    alice = await add_user(db, "usr_a")
    assert await users.get("usr_a") == alice
    assert await users.get_by_username("name-usr_a") == alice
    assert await users.get("usr_x") is None
    assert await users.get_by_username("nobody") is None
    with pytest.raises(Conflict, match=r"That username is taken\."):
        await users.add(User(id="usr_b", username="name-usr_a", password_hash="h",
                             created_at=T0))
    assert [u.id for u in await users.list()] == ["usr_a"]


async def test_datetimes_come_back_aware_utc(db: Database) -> None:
    paris = timezone(timedelta(hours=2))
    written = datetime(2025, 6, 1, 14, 30, 15, 123456, tzinfo=paris)
    await SqlAlchemyUserRepository(db).add(
        User(id="usr_a", username="a", password_hash="h", created_at=written))
    read = await SqlAlchemyUserRepository(db).get("usr_a")
    assert read is not None
    assert read.created_at == written
    assert read.created_at.utcoffset() == timedelta(0)
    assert read.created_at.hour == 12


async def test_threads_belong_to_their_user(db: Database) -> None:
    repo = SqlAlchemyThreadRepository(db)
    await add_user(db, "usr_a")
    await add_user(db, "usr_b")
    older = await add_thread(db, "usr_a", "thr_1", minutes=0)
    newer = await add_thread(db, "usr_a", "thr_2", minutes=1)
    assert await repo.get("usr_a", "thr_1") == older
    assert [t.id for t in await repo.page("usr_a")] == [newer.id, older.id]
    # A new message in thr_1 (stored with its run) makes it the most recent.
    await SqlAlchemyRunRepository(db).add(
        Run(id="run_1", user_id="usr_a", thread_id="thr_1", status=RunStatus.QUEUED, created_at=at(5)),
        Message(id="msg_1", thread_id="thr_1", user_id="usr_a", role=Role.USER, text="hi",
                created_at=at(5), run_id="run_1"))
    assert [t.id for t in await repo.page("usr_a")] == ["thr_1", "thr_2"]
    assert await repo.get("usr_b", "thr_1") is None
    assert await repo.page("usr_b") == []
    assert await repo.delete("usr_b", "thr_1") is False
    assert await repo.get("usr_a", "thr_1") is not None
    assert await repo.delete("usr_a", "thr_1") is True
    assert await repo.get("usr_a", "thr_1") is None
    assert await repo.delete("usr_a", "thr_1") is False


async def test_messages_come_in_time_order_for_their_user_only(db: Database) -> None:
    repo = SqlAlchemyMessageRepository(db)
    await add_user(db, "usr_a")
    await add_thread(db, "usr_a", "thr_1")
    for i, minutes in enumerate([2, 0, 1]):
        role = Role.USER if minutes % 2 == 0 else Role.ASSISTANT
        await insert_rows(db, messages, {"id": f"msg_{i}", "thread_id": "thr_1", "user_id": "usr_a",
                                         "role": role.value, "text": f"m{minutes}",
                                         "created_at": at(minutes), "run_id": "run_1"})
    listed = await repo.list_for_thread("usr_a", "thr_1")
    assert [m.text for m in listed] == ["m0", "m1", "m2"]
    assert [m.role for m in listed] == [Role.USER, Role.ASSISTANT, Role.USER]
    assert listed[0].run_id == "run_1"
    assert await repo.list_for_thread("usr_b", "thr_1") == []


async def test_deleting_a_thread_deletes_its_messages_and_runs(db: Database) -> None:
    await add_user(db, "usr_a")
    await add_thread(db, "usr_a", "thr_1")
    await add_thread(db, "usr_a", "thr_2")
    for thread_id in ("thr_1", "thr_2"):
        await SqlAlchemyRunRepository(db).add(
            Run(id=f"run_{thread_id}", user_id="usr_a", thread_id=thread_id,
                status=RunStatus.COMPLETED, created_at=T0),
            Message(id=f"msg_{thread_id}", thread_id=thread_id, user_id="usr_a", role=Role.USER,
                    text="hi", created_at=T0, run_id=f"run_{thread_id}"))
    assert await SqlAlchemyThreadRepository(db).delete("usr_a", "thr_1")
    async with db.reading() as conn:
        assert (await conn.execute(select(messages.c.id))).scalars().all() == ["msg_thr_2"]
        assert (await conn.execute(select(runs.c.id))).scalars().all() == ["run_thr_2"]


async def test_runs(db: Database) -> None:
    repo = SqlAlchemyRunRepository(db)
    await add_user(db, "usr_a")
    await add_thread(db, "usr_a", "thr_1")
    run = Run(id="run_1", user_id="usr_a", thread_id="thr_1", status=RunStatus.QUEUED,
              created_at=T0, client_message_id="c1")
    await repo.add(run)
    assert await repo.get("usr_a", "run_1") == run
    assert await repo.get("usr_b", "run_1") is None
    assert await repo.get_by_client_message_id("usr_a", "c1") == run
    assert await repo.get_by_client_message_id("usr_b", "c1") is None
    with pytest.raises(Conflict):
        await repo.add(Run(id="run_2", user_id="usr_a", thread_id="thr_1",
                           status=RunStatus.QUEUED, created_at=T0, client_message_id="c1"))
    await repo.add(Run(id="run_3", user_id="usr_b", thread_id="thr_1",
                       status=RunStatus.QUEUED, created_at=T0, client_message_id="c1"))
    for run_id in ("run_4", "run_5"):  # runs without a client_message_id never collide
        await repo.add(Run(id=run_id, user_id="usr_a", thread_id="thr_1",
                           status=RunStatus.QUEUED, created_at=T0))
    await repo.mark_running("run_1", 1)  # not the run's lease epoch: nothing changes
    assert (await repo.get("usr_a", "run_1")).status is RunStatus.QUEUED
    await repo.mark_running("run_1", 0)
    assert (await repo.get("usr_a", "run_1")).status is RunStatus.RUNNING


async def test_note_search_ranks_escapes_and_isolates(db: Database) -> None:
    repo = SqlAlchemyNoteRepository(db)
    notes = {
        "n1": ("usr_a", "Dentist appointment on Friday", 0),
        "n2": ("usr_a", "The dentist is Dr. Smith, appointment moved", 1),
        "n3": ("usr_a", "Buy milk", 2),
        "n4": ("usr_a", "wifi_pass is hunter2", 3),
        "n5": ("usr_a", "wifiXpass is swordfish", 4),
        "n6": ("usr_b", "My dentist appointment is secret", 5),
    }
    for note_id, (user_id, body, minutes) in notes.items():
        await repo.add(Note(id=note_id, user_id=user_id, text=body, created_at=at(minutes)))

    async def ids(user_id: str, query: str, limit: int = 5) -> list[str]:
        return [n.id for n in await repo.search(user_id, query, limit)]

    assert await ids("usr_a", "what is my DENTIST appointment?") == ["n2", "n1"]
    assert await ids("usr_a", "dentist milk") == ["n3", "n2", "n1"]
    assert await ids("usr_a", "Smith's dentist appointment") == ["n2", "n1"]
    assert await ids("usr_a", "wifi_pass") == ["n4"]
    assert await ids("usr_a", "100%") == []
    assert await ids("usr_a", "what is my") == ["n5", "n4", "n3", "n2", "n1"]
    assert await ids("usr_a", "", limit=2) == ["n5", "n4"]
    assert await ids("usr_b", "dentist") == ["n6"]
    assert await ids("usr_c", "dentist") == []


def make_event(user_id: str, run_id: str, seq: int) -> AgentEvent:
    return AgentEvent(type=EventType.AGENT_MESSAGE_DELTA, user_id=user_id, run_id=run_id,
                      thread_id=f"thr_{run_id}", seq=seq, ts=datetime.now(UTC),
                      data={"delta": f"héllo {seq}", "n": seq})


RUNS = [("usr_a", "run_1"), ("usr_a", "run_2"), ("usr_a", "run_3"), ("usr_b", "run_4"),
        ("usr_b", "run_5")]


async def test_event_log_orders_concurrent_appends_and_survives_a_restart(db: Database) -> None:
    log = SqlAlchemyEventLog(db)
    await log.start()
    last_seq = dict.fromkeys((run_id for _, run_id in RUNS), 0)
    appended: list[AgentEvent] = []  # in the order the appends were made

    async def appender(i: int) -> None:
        user_id, run_id = RUNS[i % len(RUNS)]
        for _ in range(4):
            last_seq[run_id] += 1
            slot = len(appended)
            appended.append(make_event(user_id, run_id, last_seq[run_id]))
            appended[slot] = await log.append(appended[slot])
            await asyncio.sleep(0)

    await asyncio.gather(*(appender(i) for i in range(50)))
    cursors = [e.cursor for e in appended]
    assert all(c is not None and len(c) == 20 for c in cursors)
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors) == 200

    for user_id, run_id in RUNS:
        stored = await log.read_run(user_id, run_id)
        assert [e.seq for e in stored] == list(range(1, 41))
        assert stored == [e for e in appended if e.run_id == run_id]
        assert [e.seq for e in await log.read_run(user_id, run_id, after_seq=37)] == [38, 39, 40]
        assert await log.read_run("usr_other", run_id) == []
    mine = await log.read_user("usr_a", None)
    assert mine == [e for e in appended if e.user_id == "usr_a"]
    assert mine[0].ts.tzinfo is not None and mine[0].ts.utcoffset() == timedelta(0)
    assert await log.read_user("usr_a", mine[99].cursor) == mine[100:]
    assert await log.read_user("usr_a", mine[-1].cursor) == []
    await log.stop()

    restarted = SqlAlchemyEventLog(db)
    await restarted.start()
    try:
        later = await restarted.append(make_event("usr_a", "run_1", 41))
        assert later.cursor > cursors[-1]
        assert await restarted.read_user("usr_a", mine[-1].cursor) == [later]
    finally:
        await restarted.stop()


async def test_event_log_fails_only_the_bad_append_and_keeps_writing(db: Database) -> None:
    log = SqlAlchemyEventLog(db)
    await log.start()
    try:
        await log.append(make_event("usr_a", "run_1", 1))
        results = await asyncio.gather(
            log.append(make_event("usr_a", "run_1", 2)),
            log.append(make_event("usr_a", "run_1", 1)),  # a repeated seq
            log.append(make_event("usr_a", "run_1", 3)),
            return_exceptions=True,
        )
        assert isinstance(results[1], IntegrityError)
        assert [e.seq for e in results if isinstance(e, AgentEvent)] == [2, 3]
        after = await log.append(make_event("usr_a", "run_1", 4))
        assert [e.seq for e in await log.read_run("usr_a", "run_1")] == [1, 2, 3, 4]
        assert after.cursor > results[2].cursor
    finally:
        await log.stop()
    with pytest.raises(RuntimeError):
        await log.append(make_event("usr_a", "run_1", 5))


async def test_audit_log_records_without_waiting_and_lists_newest_first(db: Database) -> None:
    audit = SqlAlchemyAuditLog(db)
    await audit.start()
    try:
        for i in range(30):
            audit.record(AuditEntry(user_id="usr_a" if i % 3 else "usr_b",
                                    action=AuditAction.RUN_ENDED, at=at(i), run_id=f"run_{i}",
                                    outcome="completed", detail=None))
        await audit.flush()
        everyone = await audit.list()
        assert [e.run_id for e in everyone] == [f"run_{i}" for i in reversed(range(30))]
        assert everyone[0].action is AuditAction.RUN_ENDED and everyone[0].at == at(29)
        only_b = await audit.list(user_id="usr_b", limit=3)
        assert [e.run_id for e in only_b] == ["run_27", "run_24", "run_21"]
        audit.record(AuditEntry(user_id="usr_c", action=AuditAction.USER_REGISTERED, at=T0))
    finally:
        await audit.stop()
    assert [e.action for e in await audit.list(user_id="usr_c")] == [AuditAction.USER_REGISTERED]
    async with db.reading() as conn:
        count = select(func.count()).select_from(text("audit_log"))
        assert (await conn.execute(count)).scalar() == 31
