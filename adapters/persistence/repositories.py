"""The domain's repositories on SQLAlchemy Core; every read of a user's data names the user."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError

from adapters.persistence.database import Database, SqlConnection
from adapters.persistence.event_log import delete_thread_events
from adapters.persistence.tables import messages, notes, runs, threads, users
from domain.errors import Conflict, NotFound
from domain.model import Message, Note, Role, Run, RunStatus, Thread, User

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


class SqlAlchemyUserRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, user: User) -> None:
        values: dict[str, Any] = {"id": user.id, "username": user.username,
                                  "password_hash": user.password_hash, "created_at": user.created_at}
        if user.token_version:
            # A new user is at 0, the column's server default; only another value is written.
            values["token_version"] = user.token_version
        try:
            async with self._db.writing() as conn:
                await conn.execute(insert(users).values(**values))
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
        async with self._db.writing() as conn:
            if conn.dialect.name == "postgresql":
                version = (await conn.execute(statement.returning(users.c.token_version))).scalar()
            elif (await conn.execute(statement)).rowcount == 1:
                # SQLite: the write lock (BEGIN IMMEDIATE) is held until commit, so the version
                # read here is the one this UPDATE wrote.
                version = (await conn.execute(
                    select(users.c.token_version).where(users.c.id == user_id))).scalar()
            else:
                version = None
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

    async def add(self, thread: Thread) -> None:
        async with self._db.writing() as conn:
            await conn.execute(insert(threads).values(
                id=thread.id, user_id=thread.user_id, title=thread.title,
                created_at=thread.created_at, updated_at=thread.updated_at,
            ))

    async def get(self, user_id: str, thread_id: str) -> Thread | None:
        query = select(threads).where(threads.c.id == thread_id, threads.c.user_id == user_id)
        async with self._db.reading() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else Thread(**row._mapping)

    async def list_for_user(self, user_id: str) -> Sequence[Thread]:
        query = (select(threads).where(threads.c.user_id == user_id)
                 .order_by(threads.c.updated_at.desc(), threads.c.id))
        async with self._db.reading() as conn:
            return [Thread(**row._mapping) for row in await conn.execute(query)]

    async def touch(self, thread_id: str, at: datetime) -> None:
        async with self._db.writing() as conn:
            await conn.execute(update(threads).where(threads.c.id == thread_id)
                               .values(updated_at=at))

    async def delete(self, user_id: str, thread_id: str) -> bool:
        """Deletes the thread's messages, runs and events too, whether or not foreign keys cascade.

        A deleted conversation must not be replayable, so its events go in the same transaction.
        """
        owned = select(threads.c.id).where(threads.c.id == thread_id,
                                           threads.c.user_id == user_id)
        async with self._db.writing() as conn:
            if (await conn.execute(owned)).first() is None:
                return False
            await conn.execute(delete(messages).where(messages.c.thread_id == thread_id))
            await conn.execute(delete(runs).where(runs.c.thread_id == thread_id))
            await conn.execute(delete(threads).where(threads.c.id == thread_id))
            await delete_thread_events(conn, user_id, thread_id)
        return True


class SqlAlchemyMessageRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, message: Message) -> None:
        async with self._db.writing() as conn:
            await conn.execute(insert(messages).values(
                id=message.id, thread_id=message.thread_id, user_id=message.user_id,
                role=message.role.value, text=message.text, run_id=message.run_id,
                created_at=message.created_at,
            ))

    async def list_for_thread(self, user_id: str, thread_id: str) -> Sequence[Message]:
        query = (select(messages)
                 .where(messages.c.thread_id == thread_id, messages.c.user_id == user_id)
                 .order_by(messages.c.created_at, messages.c.id))
        async with self._db.reading() as conn:
            rows = await conn.execute(query)
            return [Message(**{**row._mapping, "role": Role(row.role)}) for row in rows]


def _run(row: Any) -> Run:
    return Run(**{**row._mapping, "status": RunStatus(row.status)})


class SqlAlchemyRunRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, run: Run) -> None:
        try:
            async with self._db.writing() as conn:
                await conn.execute(insert(runs).values(
                    id=run.id, user_id=run.user_id, thread_id=run.thread_id,
                    status=run.status.value, client_message_id=run.client_message_id,
                    created_at=run.created_at, finished_at=run.finished_at, error=run.error,
                    owner=run.owner, lease_expires_at=run.lease_expires_at,
                ))
        except IntegrityError as exc:
            raise Conflict("A run for that client_message_id exists already.") from exc

    async def get(self, user_id: str, run_id: str) -> Run | None:
        return await self._one(runs.c.user_id == user_id, runs.c.id == run_id)

    async def get_by_client_message_id(self, user_id: str, client_message_id: str) -> Run | None:
        return await self._one(runs.c.user_id == user_id,
                               runs.c.client_message_id == client_message_id)

    async def set_status(
        self,
        run_id: str,
        status: RunStatus,
        *,
        finished_at: datetime | None = None,
        error: str | None = None,
    ) -> None:
        """Sets the status; `finished_at` and `error` change only when given.

        A final status is never overwritten: a run that recovery already failed (its owner
        stalled past its lease) stays failed whatever its owner writes afterwards.
        """
        values: dict[str, Any] = {"status": status.value}
        if finished_at is not None:
            values["finished_at"] = finished_at
        if error is not None:
            values["error"] = error
        async with self._db.writing() as conn:
            await conn.execute(update(runs)
                               .where(runs.c.id == run_id, runs.c.status.in_(_UNFINISHED))
                               .values(**values))

    async def count_unfinished(self, user_id: str) -> int:
        query = (select(func.count()).select_from(runs)
                 .where(runs.c.user_id == user_id, runs.c.status.in_(_UNFINISHED)))
        async with self._db.reading() as conn:
            return (await conn.execute(query)).scalar() or 0

    async def renew_leases(self, owner: str, until: datetime) -> int:
        """Extends the lease of every unfinished run `owner` holds to `until`; returns how many."""
        statement = (update(runs)
                     .where(runs.c.owner == owner, runs.c.status.in_(_UNFINISHED))
                     .values(lease_expires_at=until))
        async with self._db.writing() as conn:
            return (await conn.execute(statement)).rowcount

    async def claim_orphans(self, now: datetime, error: str, limit: int = 100) -> Sequence[Run]:
        """Fails up to `limit` unfinished runs whose lease lapsed before `now`; returns them.

        A run without a lease is never claimed. Each UPDATE re-checks its run is still an
        unfinished orphan, so of two sweepers (tasks or processes) racing for a run only one
        changes it and returns it.
        """
        if limit <= 0:
            return []
        lapsed = (runs.c.status.in_(_UNFINISHED), runs.c.lease_expires_at < now)
        oldest = select(runs.c.id).where(*lapsed).order_by(runs.c.lease_expires_at, runs.c.id)
        values = {"status": RunStatus.FAILED.value, "finished_at": now, "error": error}
        async with self._db.writing() as conn:
            if conn.dialect.name == "postgresql":
                claimed = await self._claim_skipping_locked(conn, oldest.limit(limit), lapsed, values)
            else:
                claimed = await self._claim_one_by_one(conn, oldest.limit(limit), lapsed, values)
        return sorted(claimed, key=lambda run: (run.lease_expires_at or now, run.id))

    @staticmethod
    async def _claim_skipping_locked(
        conn: SqlConnection, candidates: Any, lapsed: tuple[Any, ...], values: dict[str, Any]
    ) -> list[Run]:
        """PostgreSQL: one UPDATE ... RETURNING; rows another sweeper has locked are skipped."""
        statement = (update(runs)
                     .where(runs.c.id.in_(candidates.with_for_update(skip_locked=True)), *lapsed)
                     .values(**values)
                     .returning(*runs.c))
        return [_run(row) for row in await conn.execute(statement)]

    @staticmethod
    async def _claim_one_by_one(
        conn: SqlConnection, candidates: Any, lapsed: tuple[Any, ...], values: dict[str, Any]
    ) -> list[Run]:
        """Any database: a guarded UPDATE per candidate, keeping those it changed."""
        ids = (await conn.execute(candidates)).scalars().all()
        claimed: list[str] = []
        for run_id in sorted(ids):  # one lock order for every sweeper
            result = await conn.execute(update(runs).where(runs.c.id == run_id, *lapsed)
                                        .values(**values))
            if result.rowcount == 1:
                claimed.append(run_id)
        if not claimed:
            return []
        return [_run(row) for row in await conn.execute(select(runs).where(runs.c.id.in_(claimed)))]

    async def _one(self, *where: Any) -> Run | None:
        async with self._db.reading() as conn:
            row = (await conn.execute(select(runs).where(*where))).first()
        return None if row is None else _run(row)


class SqlAlchemyNoteRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, note: Note) -> None:
        async with self._db.writing() as conn:
            await conn.execute(insert(notes).values(
                id=note.id, user_id=note.user_id, text=note.text, created_at=note.created_at,
            ))

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

