"""Threads and their messages on SQLAlchemy Core: listed a page at a time, searched, renamed,
forked, read as a timeline, deleted with everything of theirs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, bindparam, delete, insert, or_, select, update

from adapters.persistence.connection import SqlConnection, escape_like
from adapters.persistence.database import Database
from adapters.persistence.event_log import delete_thread_events
from adapters.persistence.tables import approval_grants, messages, runs, threads
from domain.entities import Message, Role, Thread

_THREAD_OF_USER = select(threads).where(threads.c.id == bindparam("thread_id"),
                                        threads.c.user_id == bindparam("user_id"))
_MESSAGES_OF_THREAD = (select(messages)
                       .where(messages.c.thread_id == bindparam("thread_id"),
                              messages.c.user_id == bindparam("user_id"))
                       .order_by(messages.c.created_at, messages.c.id))


class SqlAlchemyThreadRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, user_id: str, thread_id: str) -> Thread | None:
        async with self._db.reading() as conn:
            row = (await conn.execute(_THREAD_OF_USER, {"thread_id": thread_id, "user_id": user_id})).first()
        return None if row is None else Thread(**row._mapping)

    async def page(self, user_id: str, *, query: str | None = None,
                   after: tuple[datetime, str] | None = None, limit: int = 100) -> Sequence[Thread]:
        statement = select(threads).where(threads.c.user_id == user_id)
        if query:
            pattern = f"%{escape_like(query)}%"
            said = (select(messages.c.id)
                    .where(messages.c.thread_id == threads.c.id, messages.c.user_id == user_id,
                           messages.c.text.ilike(pattern, escape="\\")).exists())
            statement = statement.where(or_(threads.c.title.ilike(pattern, escape="\\"), said))
        if after is not None:
            at, thread_id = after
            statement = statement.where(or_(threads.c.updated_at < at,
                                            and_(threads.c.updated_at == at, threads.c.id > thread_id)))
        statement = statement.order_by(threads.c.updated_at.desc(), threads.c.id).limit(limit)
        async with self._db.reading() as conn:
            return [Thread(**row._mapping) for row in await conn.execute(statement)]

    async def rename(self, user_id: str, thread_id: str, title: str) -> Thread | None:
        statement = (update(threads).where(threads.c.id == thread_id, threads.c.user_id == user_id)
                     .values(title=title))

        async def rename_owned(conn: SqlConnection) -> bool:
            return (await conn.execute(statement)).rowcount == 1

        if not await self._db.write(rename_owned):
            return None
        return await self.get(user_id, thread_id)

    async def add_fork(self, thread: Thread, copied: Sequence[Message]) -> None:
        async def fork(conn: SqlConnection) -> None:
            await conn.execute(insert(threads), {"id": thread.id, "user_id": thread.user_id,
                                                 "title": thread.title, "created_at": thread.created_at,
                                                 "updated_at": thread.updated_at})
            if copied:
                await conn.execute(insert(messages), [
                    {"id": m.id, "thread_id": m.thread_id, "user_id": m.user_id, "role": m.role.value,
                     "text": m.text, "run_id": m.run_id, "created_at": m.created_at} for m in copied])

        await self._db.write(fork)

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
            await conn.execute(delete(approval_grants).where(approval_grants.c.user_id == user_id,
                                                             approval_grants.c.thread_id == thread_id))
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

    async def page(self, user_id: str, thread_id: str, *, before: tuple[datetime, str] | None = None,
                   limit: int = 50) -> Sequence[Message]:
        statement = select(messages).where(messages.c.thread_id == thread_id, messages.c.user_id == user_id)
        if before is not None:
            at, message_id = before
            statement = statement.where(or_(messages.c.created_at < at,
                                            and_(messages.c.created_at == at, messages.c.id < message_id)))
        statement = statement.order_by(messages.c.created_at.desc(), messages.c.id.desc()).limit(limit)
        async with self._db.reading() as conn:
            rows = await conn.execute(statement)
            return [Message(**{**row._mapping, "role": Role(row.role)}) for row in rows]
