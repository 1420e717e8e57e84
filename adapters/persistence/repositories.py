"""The domain's repositories on SQLAlchemy Core; every read of a user's data names the user."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, delete, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError

from adapters.persistence.committer import Transaction
from adapters.persistence.connection import SqlConnection, upsert_into
from adapters.persistence.database import Database
from adapters.persistence.event_log import delete_thread_events
from adapters.persistence.tables import messages, notes, runs, threads, users
from domain.entities import Message, Note, Role, Run, RunStatus, Thread, User
from domain.errors import Conflict, NotFound

_UNFINISHED = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
_WORD = re.compile(r"\w+")
_MAX_SEARCH_WORDS = 12
_STOP_WORDS = frozenset({
    "about", "all", "and", "any", "are", "can", "could", "did", "does", "for", "from", "had",
    "has", "have", "her", "his", "how", "its", "just", "know", "let", "not", "note", "notes",
    "now", "our", "please", "remember", "saved", "say", "said", "she", "should", "tell", "than",
    "that", "the", "their", "them", "then", "there", "these", "they", "this", "was", "were",
    "what", "when", "where", "which", "who", "whom", "why", "will", "with", "would", "you",
    "your", "yours",
})


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search_words(query: str) -> list[str]:
    """The words of `query` worth matching: 3+ characters, no stop words, first seen first."""
    words = [w for w in _WORD.findall(query.casefold()) if len(w) >= 3 and w not in _STOP_WORDS]
    return list(dict.fromkeys(words))[:_MAX_SEARCH_WORDS]


# The statements of the golden path, built once: building one costs more than running it on SQLite.
_INSERT_THREAD = insert(threads)
_INSERT_MESSAGE = insert(messages)
_INSERT_RUN = insert(runs)
_INSERT_NOTE = insert(notes)
_TOUCH_THREAD = (update(threads).where(threads.c.id == bindparam("thread_id"))
                 .values(updated_at=bindparam("at")))
_THREAD_OF_USER = select(threads).where(threads.c.id == bindparam("thread_id"),
                                        threads.c.user_id == bindparam("user_id"))
_MESSAGES_OF_THREAD = (select(messages)
                       .where(messages.c.thread_id == bindparam("thread_id"),
                              messages.c.user_id == bindparam("user_id"))
                       .order_by(messages.c.created_at, messages.c.id))
_RUN_BY_ID = select(runs).where(runs.c.user_id == bindparam("user_id"), runs.c.id == bindparam("key"))
_RUN_BY_CLIENT_MESSAGE_ID = select(runs).where(runs.c.user_id == bindparam("user_id"),
                                               runs.c.client_message_id == bindparam("key"))
_COUNT_UNFINISHED = (select(func.count()).select_from(runs)
                     .where(runs.c.user_id == bindparam("user_id"), runs.c.status.in_(_UNFINISHED)))
# Fenced: only the holder of the run's current lease epoch moves it on, and only while queued.
_MARK_RUNNING = (update(runs)
                 .where(runs.c.id == bindparam("run_id"), runs.c.lease_epoch == bindparam("epoch"),
                        runs.c.status == RunStatus.QUEUED.value)
                 .values(status=RunStatus.RUNNING.value))


# Staged statements run in rank order: a table after the tables its rows reference.
_THREADS, _RUNS, _MESSAGES, _UPDATES = range(4)


def _stage_thread(tx: Transaction, thread: Thread) -> None:
    tx.stage(_INSERT_THREAD, rank=_THREADS, row={
        "id": thread.id, "user_id": thread.user_id, "title": thread.title,
        "created_at": thread.created_at, "updated_at": thread.updated_at,
    })


def _stage_message(tx: Transaction, message: Message) -> None:
    tx.stage(_INSERT_MESSAGE, rank=_MESSAGES, row={
        "id": message.id, "thread_id": message.thread_id, "user_id": message.user_id,
        "role": message.role.value, "text": message.text, "run_id": message.run_id,
        "created_at": message.created_at,
    })


def _stage_touch(tx: Transaction, thread_id: str, at: datetime) -> None:
    tx.stage(_TOUCH_THREAD, {"thread_id": thread_id, "at": at}, rank=_UPDATES)


def _run_row(run: Run) -> dict[str, Any]:
    return {"id": run.id, "user_id": run.user_id, "thread_id": run.thread_id,
            "status": run.status.value, "client_message_id": run.client_message_id,
            "created_at": run.created_at, "finished_at": run.finished_at, "error": run.error,
            "owner": run.owner, "lease_expires_at": run.lease_expires_at,
            "lease_epoch": run.lease_epoch}



class SqlAlchemyUserRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, user: User) -> None:
        values: dict[str, Any] = {"id": user.id, "username": user.username,
                                  "password_hash": user.password_hash, "created_at": user.created_at}
        if user.token_version:
            # A new user is at 0, the column's server default; only another value is written.
            values["token_version"] = user.token_version

        async def add(conn: SqlConnection) -> None:
            await conn.execute(insert(users).values(**values))

        try:
            await self._db.write(add)
        except IntegrityError as exc:
            raise Conflict("That username is taken.") from exc

    async def get(self, user_id: str) -> User | None:
        return await self._one(users.c.id == user_id)

    async def get_by_username(self, username: str) -> User | None:
        return await self._one(users.c.username == username)

    async def list(self) -> Sequence[User]:
        async with self._db.reading() as conn:
            rows = await conn.execute(select(users).order_by(users.c.created_at, users.c.id))
            return [User(**row._mapping) for row in rows]

    async def bump_token_version(self, user_id: str) -> int:
        """Revokes every token issued so far; returns the new version (NotFound: no such user)."""
        return await self._bump(user_id)

    async def set_password(self, user_id: str, password_hash: str) -> int:
        """Stores the new hash and bumps the version in one statement; returns the new version."""
        return await self._bump(user_id, password_hash=password_hash)

    async def _bump(self, user_id: str, **values: Any) -> int:
        """One atomic increment: two bumps at once (two devices logging out) give two versions."""
        statement = (update(users).where(users.c.id == user_id)
                     .values(token_version=users.c.token_version + 1, **values))

        async def bump(conn: SqlConnection) -> int | None:
            if conn.dialect.name == "postgresql":
                return (await conn.execute(statement.returning(users.c.token_version))).scalar()
            if (await conn.execute(statement)).rowcount == 1:
                # SQLite: the write lock (BEGIN IMMEDIATE) is held until commit, so the version
                # read here is the one this UPDATE wrote.
                return (await conn.execute(
                    select(users.c.token_version).where(users.c.id == user_id))).scalar()
            return None

        version = await self._db.write(bump)
        if version is None:
            raise NotFound("That user no longer exists.")
        return int(version)

    async def _one(self, where: Any) -> User | None:
        async with self._db.reading() as conn:
            row = (await conn.execute(select(users).where(where))).first()
        return None if row is None else User(**row._mapping)


class SqlAlchemyThreadRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, user_id: str, thread_id: str) -> Thread | None:
        async with self._db.reading() as conn:
            row = (await conn.execute(_THREAD_OF_USER, {"thread_id": thread_id, "user_id": user_id})).first()
        return None if row is None else Thread(**row._mapping)

    async def list_for_user(self, user_id: str) -> Sequence[Thread]:
        query = (select(threads).where(threads.c.user_id == user_id)
                 .order_by(threads.c.updated_at.desc(), threads.c.id))
        async with self._db.reading() as conn:
            return [Thread(**row._mapping) for row in await conn.execute(query)]

    async def delete(self, user_id: str, thread_id: str) -> bool:
        """Deletes the thread's messages, runs and events too, whether or not foreign keys cascade.

        A deleted conversation must not be replayable, so its events go in the same transaction.
        """
        owned = select(threads.c.id).where(threads.c.id == thread_id,
                                           threads.c.user_id == user_id)

        async def delete_owned(conn: SqlConnection) -> bool:
            if (await conn.execute(owned)).first() is None:
                return False
            await conn.execute(delete(messages).where(messages.c.thread_id == thread_id))
            await conn.execute(delete(runs).where(runs.c.thread_id == thread_id))
            await conn.execute(delete(threads).where(threads.c.id == thread_id))
            await delete_thread_events(conn, user_id, thread_id)
            return True

        return await self._db.write(delete_owned)


class SqlAlchemyMessageRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list_for_thread(self, user_id: str, thread_id: str) -> Sequence[Message]:
        async with self._db.reading() as conn:
            rows = await conn.execute(_MESSAGES_OF_THREAD, {"thread_id": thread_id, "user_id": user_id})
            return [Message(**{**row._mapping, "role": Role(row.role)}) for row in rows]


def _run(row: Any) -> Run:
    return Run(**{**row._mapping, "status": RunStatus(row.status)})


class SqlAlchemyRunRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, run: Run, message: Message | None = None, *, new_thread: Thread | None = None
                  ) -> None:
        """Stores the run with the message that asked for it (and the thread it opened), atomically.

        The thread's updated_at becomes the message's time. Conflict: a run for that
        client_message_id exists already (nothing is stored then).
        """

        async def add_run(tx: Transaction) -> None:
            if new_thread is not None:
                _stage_thread(tx, new_thread)
            tx.stage(_INSERT_RUN, _run_row(run), rank=_RUNS)
            if message is not None:
                _stage_message(tx, message)
                if new_thread is None:
                    _stage_touch(tx, run.thread_id, message.created_at)

        try:
            await self._db.write(add_run)
        except IntegrityError as exc:
            raise Conflict("A run for that client_message_id exists already.") from exc

    async def get(self, user_id: str, run_id: str) -> Run | None:
        return await self._one(_RUN_BY_ID, user_id, run_id)

    async def get_by_client_message_id(self, user_id: str, client_message_id: str) -> Run | None:
        return await self._one(_RUN_BY_CLIENT_MESSAGE_ID, user_id, client_message_id)

    async def mark_running(self, run_id: str, epoch: int) -> None:
        """Queued becomes running, if the run is still held at `epoch` and unfinished."""

        async def mark(tx: Transaction) -> None:
            tx.stage(_MARK_RUNNING, {"run_id": run_id, "epoch": epoch}, rank=_UPDATES)

        await self._db.write(mark)

    async def count_unfinished(self, user_id: str) -> int:
        async with self._db.reading() as conn:
            return (await conn.execute(_COUNT_UNFINISHED, {"user_id": user_id})).scalar() or 0

    async def renew_leases(self, owner: str, until: datetime, run_ids: Collection[str]) -> int:
        """Extends to `until` the leases `owner` holds of these unfinished runs; returns how many."""
        if not run_ids:
            return 0
        statement = (update(runs)
                     .where(runs.c.owner == owner, runs.c.id.in_(list(run_ids)),
                            runs.c.status.in_(_UNFINISHED))
                     .values(lease_expires_at=until))

        async def renew(conn: SqlConnection) -> int:
            return (await conn.execute(statement)).rowcount

        return await self._db.write(renew)

    async def take_over(self, *, new_owner: str, until: datetime, lapsed_before: datetime | None = None,
                        previous_owner: str | None = None, limit: int = 100) -> Sequence[Run]:
        """Takes up to `limit` unfinished runs for `new_owner`: a new lease, the next lease epoch.

        Which runs: those whose lease lapsed before `lapsed_before`, or those `previous_owner`
        held (a process restarting takes back what it held before). A run without a lease is
        never taken. Each UPDATE re-checks its run still qualifies, so of two sweepers (tasks or
        processes) racing for a run only one takes it.
        """
        if limit <= 0:
            return []
        wanted: list[Any] = [runs.c.status.in_(_UNFINISHED), runs.c.lease_expires_at.is_not(None)]
        if lapsed_before is not None:
            wanted.append(runs.c.lease_expires_at < lapsed_before)
        if previous_owner is not None:
            wanted.append(runs.c.owner == previous_owner)
        oldest = select(runs.c.id).where(*wanted).order_by(runs.c.lease_expires_at, runs.c.id)
        values = {"owner": new_owner, "lease_expires_at": until, "lease_epoch": runs.c.lease_epoch + 1}

        async def claim(conn: SqlConnection) -> list[Run]:
            if conn.dialect.name == "postgresql":
                return await self._claim_skipping_locked(conn, oldest.limit(limit), wanted, values)
            return await self._claim_one_by_one(conn, oldest.limit(limit), wanted, values)

        taken = await self._db.write(claim)
        return sorted(taken, key=lambda run: run.id)

    @staticmethod
    async def _claim_skipping_locked(
        conn: SqlConnection, candidates: Any, wanted: list[Any], values: dict[str, Any]
    ) -> list[Run]:
        """PostgreSQL: one UPDATE ... RETURNING; rows another sweeper has locked are skipped.

        The candidates are a MATERIALIZED CTE, not `id IN (SELECT ... LIMIT n)`: PostgreSQL may
        run such a subquery again for each row, and take more than `n` runs (seen in a test).
        """
        picked = candidates.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        statement = (update(runs)
                     .where(runs.c.id == picked.c.id, *wanted)
                     .values(**values)
                     .returning(*runs.c))
        return [_run(row) for row in await conn.execute(statement)]

    @staticmethod
    async def _claim_one_by_one(
        conn: SqlConnection, candidates: Any, wanted: list[Any], values: dict[str, Any]
    ) -> list[Run]:
        """Any database: a guarded UPDATE per candidate, keeping those it changed."""
        ids = (await conn.execute(candidates)).scalars().all()
        claimed: list[str] = []
        for run_id in sorted(ids):  # one lock order for every sweeper
            result = await conn.execute(update(runs).where(runs.c.id == run_id, *wanted).values(**values))
            if result.rowcount == 1:
                claimed.append(run_id)
        if not claimed:
            return []
        return [_run(row) for row in await conn.execute(select(runs).where(runs.c.id.in_(claimed)))]

    async def _one(self, query: Any, user_id: str, key: str) -> Run | None:
        async with self._db.reading() as conn:
            row = (await conn.execute(query, {"user_id": user_id, "key": key})).first()
        return None if row is None else _run(row)


class SqlAlchemyNoteRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, note: Note) -> Note:
        row = {"id": note.id, "user_id": note.user_id, "text": note.text, "created_at": note.created_at,
               "key": note.key}
        if note.key is None:

            async def add_note(tx: Transaction) -> None:
                tx.stage(_INSERT_NOTE, row, rank=_THREADS)  # references users only

            await self._db.write(add_note)
            return note

        async def add_keyed(tx: Transaction) -> Note:
            # Keyed: the same tool call run again (a takeover, or its stalled first runner woken)
            # finds the note stored the first time. ON CONFLICT, not read-then-insert: two runs of
            # the call at once must not fail the whole batch of writes on the unique index.
            await tx.execute(upsert_into(tx.dialect, notes).on_conflict_do_nothing(
                index_elements=[notes.c.user_id, notes.c.key]), row)
            kept = select(notes).where(notes.c.user_id == note.user_id, notes.c.key == note.key)
            return Note(**(await tx.execute(kept)).one()._mapping)

        return await self._db.write(add_keyed)

    async def search(self, user_id: str, query: str, limit: int = 5) -> Sequence[Note]:
        """Notes holding the most of the query's words, newest first; no words: the newest."""
        if limit <= 0:
            return []
        newest = (notes.c.created_at.desc(), notes.c.id.desc())
        statement = select(notes).where(notes.c.user_id == user_id)
        words = search_words(query)
        if words:
            hits = [notes.c.text.ilike(f"%{_escape_like(w)}%", escape="\\") for w in words]
            score = sum((case((hit, 1), else_=0) for hit in hits), literal(0))
            statement = statement.where(score > 0).order_by(score.desc(), *newest)
        else:
            statement = statement.order_by(*newest)
        async with self._db.reading() as conn:
            rows = await conn.execute(statement.limit(limit))
            return [Note(**row._mapping) for row in rows]

