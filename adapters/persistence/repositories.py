"""The domain's repositories on SQLAlchemy Core; every read of a user's data names the user."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from adapters.persistence.committer import Transaction
from adapters.persistence.connection import SqlConnection
from adapters.persistence.database import Database
from adapters.persistence.grants import add_grant
from adapters.persistence.tables import messages, run_checkpoints, runs, threads, users
from domain.entities import ApprovalGrant, Message, Run, RunStatus, Thread, User
from domain.errors import Conflict, NotFound

_UNFINISHED = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
_GOING = (*_UNFINISHED, RunStatus.WAITING.value)  # not ended: a waiting run is going, and holds nothing
# The statements of the golden path, built once: building one costs more than running it on SQLite.
_INSERT_THREAD = insert(threads)
_INSERT_MESSAGE = insert(messages)
_INSERT_RUN = insert(runs)
_TOUCH_THREAD = (update(threads).where(threads.c.id == bindparam("thread_id"))
                 .values(updated_at=bindparam("at")))
_RUN_BY_ID = select(runs).where(runs.c.user_id == bindparam("user_id"), runs.c.id == bindparam("key"))
_RUN_BY_CLIENT_MESSAGE_ID = select(runs).where(runs.c.user_id == bindparam("user_id"),
                                               runs.c.client_message_id == bindparam("key"))
_COUNT_UNFINISHED = (select(func.count()).select_from(runs)
                     .where(runs.c.user_id == bindparam("user_id"), runs.c.status.in_(_UNFINISHED)))
_WAITING_IN_THREAD = (select(runs)
                      .where(runs.c.user_id == bindparam("user_id"),
                             runs.c.thread_id == bindparam("thread_id"),
                             runs.c.status == RunStatus.WAITING.value)
                      .order_by(runs.c.created_at, runs.c.id))
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
            "lease_epoch": run.lease_epoch, "takeovers": run.takeovers,
            "wait_expires_at": run.wait_expires_at}



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


def _run(row: Any) -> Run:
    return Run(**{**row._mapping, "status": RunStatus(row.status)})


def _claimed(owner: str, until: datetime) -> dict[str, Any]:
    """A waiting run claimed: running again, leased to `owner`, at the next epoch (so a write of
    anyone else who acted on it as waiting is refused)."""
    return {"status": RunStatus.RUNNING.value, "owner": owner, "lease_expires_at": until,
            "lease_epoch": runs.c.lease_epoch + 1, "wait_expires_at": None}


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

    async def get_many(self, user_id: str, run_ids: Collection[str]) -> Sequence[Run]:
        if not run_ids:
            return []
        query = select(runs).where(runs.c.user_id == user_id, runs.c.id.in_(list(run_ids)))
        async with self._db.reading() as conn:
            return [_run(row) for row in await conn.execute(query)]

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
        values = {"owner": new_owner, "lease_expires_at": until, "lease_epoch": runs.c.lease_epoch + 1,
                  "takeovers": runs.c.takeovers + 1}

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

    async def waiting_in_thread(self, user_id: str, thread_id: str) -> Sequence[Run]:
        async with self._db.reading() as conn:
            rows = await conn.execute(_WAITING_IN_THREAD, {"user_id": user_id, "thread_id": thread_id})
            return [_run(row) for row in rows]

    async def waiting_for_user(self, user_id: str, limit: int = 100) -> Sequence[Run]:
        query = (select(runs).where(runs.c.user_id == user_id, runs.c.status == RunStatus.WAITING.value)
                 .order_by(runs.c.created_at, runs.c.id).limit(limit))
        async with self._db.reading() as conn:
            return [_run(row) for row in await conn.execute(query)]

    async def unfinished_before(self, run: Run) -> Run | None:
        earlier = or_(runs.c.created_at < run.created_at,
                      and_(runs.c.created_at == run.created_at, runs.c.id < run.id))
        query = (select(runs).where(runs.c.thread_id == run.thread_id, runs.c.user_id == run.user_id,
                                    runs.c.status.in_(_GOING), earlier)
                 .order_by(runs.c.created_at, runs.c.id).limit(1))
        async with self._db.reading() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _run(row)

    async def claim_waiting(self, run_id: str, *, owner: str, until: datetime,
                            checkpoint: dict[str, Any] | None = None, grant: ApprovalGrant | None = None,
                            unexpired_at: datetime | None = None) -> Run | None:
        """One guarded UPDATE (still waiting, not lapsed) decides who claims; the new checkpoint
        state and the grant are written in its transaction, or not at all."""
        wanted = [runs.c.id == run_id, runs.c.status == RunStatus.WAITING.value]
        if unexpired_at is not None:
            wanted.append(runs.c.wait_expires_at > unexpired_at)

        async def claim(conn: SqlConnection) -> Run | None:
            result = await conn.execute(update(runs).where(*wanted).values(**_claimed(owner, until)))
            if result.rowcount != 1:
                return None
            if checkpoint is not None:
                await conn.execute(update(run_checkpoints).where(run_checkpoints.c.run_id == run_id).values(
                    state=json.dumps(checkpoint, ensure_ascii=False, separators=(",", ":")),
                    format=int(checkpoint["format"])))
            if grant is not None:
                await add_grant(conn, grant)
            return _run((await conn.execute(select(runs).where(runs.c.id == run_id))).one())

        return await self._db.write(claim)

    async def claim_expired_waiting(self, *, owner: str, now: datetime, until: datetime,
                                    limit: int = 100) -> Sequence[Run]:
        wanted = [runs.c.status == RunStatus.WAITING.value, runs.c.wait_expires_at <= now]
        oldest = select(runs.c.id).where(*wanted).order_by(runs.c.wait_expires_at, runs.c.id).limit(limit)

        async def claim(conn: SqlConnection) -> list[Run]:
            values = _claimed(owner, until)
            if conn.dialect.name == "postgresql":
                return await self._claim_skipping_locked(conn, oldest, wanted, values)
            return await self._claim_one_by_one(conn, oldest, wanted, values)

        return await self._db.write(claim)

    async def _one(self, query: Any, user_id: str, key: str) -> Run | None:
        async with self._db.reading() as conn:
            row = (await conn.execute(query, {"user_id": user_id, "key": key})).first()
        return None if row is None else _run(row)
