"""The database: PostgreSQL through asyncpg, SQLite run inline on the event loop, Alembic migrations.

SQLite runs synchronously on the loop, not on a driver thread (aiosqlite). Measured on the
2-core bench machine (docs/performance.md): a statement through aiosqlite cost ~165 µs of
thread hand-offs and GIL convoys against ~45 µs inline, a write transaction ~470 µs against
~140 µs, and under 100 users the hops, not SQLite, were the server's ceiling. Our statements
are index lookups and small inserts (µs in SQLite itself), so blocking the loop for them
costs less than handing them to a thread. Two rules keep that safe:

- nothing awaits anything that can suspend inside `writing()`/`reading()` on SQLite (the
  connection facade's coroutines never suspend), so one process never waits on its own lock;
- SQLite is the one-process profile (production refuses it): the only other writers of the
  file are short CLI commands, and `busy_timeout` bounds how long the loop could wait for one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import QueuePool

from adapters.persistence.committer import GroupCommitter, Work
from adapters.persistence.connection import InlineConnection, SqlConnection, raise_outage_as_domain_error

T = TypeVar("T")
MIGRATIONS = Path(__file__).parent / "migrations"
_IMMEDIATE = "goldenpath_sqlite_immediate"

_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=2000",
)

def alembic_config(url: str) -> Config:
    """An Alembic config for our migrations and `url`, without an alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolates "%", which URL-encoded passwords contain.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()
    # We emit BEGIN ourselves (below); the driver's own would come too late for IMMEDIATE.
    dbapi_connection.isolation_level = None


def _begin_sqlite(conn: Connection) -> None:
    """Writers take SQLite's write lock at BEGIN, so what they read is what they write over."""
    immediate = conn.get_execution_options().get(_IMMEDIATE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _upgrade(connection: Connection, config: Config) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _sqlite_engine(url: str, echo: bool) -> Engine:
    parsed = make_url(url).set(drivername="sqlite+pysqlite")
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # Unbounded overflow: checking a connection out must never wait, which would block the loop.
    engine = create_engine(parsed, echo=echo, poolclass=QueuePool, pool_size=4, max_overflow=-1)
    event.listen(engine, "connect", _set_sqlite_pragmas)
    event.listen(engine, "begin", _begin_sqlite)
    return engine


class Database:
    """SQLite (inline) or PostgreSQL (asyncpg); connects on first use, not before."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 20) -> None:
        self._url = url
        self._dialect = make_url(url).get_backend_name()
        if self._dialect == "sqlite":
            self._sqlite: Engine | None = _sqlite_engine(url, echo)
            # One writer per SQLite file: a writer that awaits mid-transaction queues the others here.
            self._write_lock: asyncio.Lock | None = asyncio.Lock()
        else:
            self._sqlite = None
            self._write_lock = None
            # No overflow: overflow connections are closed on return, so under load the server
            # reconnected to PostgreSQL all the time (8% of its time in the bench's profile;
            # 100 -> 230 runs/s without). Past pool_size, a read waits for a connection.
            self._async = create_async_engine(url, echo=echo, pool_pre_ping=True,
                                              pool_size=pool_size, max_overflow=0)
            # Reads run in autocommit: one round trip per query instead of BEGIN, query, ROLLBACK.
            self._reader = self._async.execution_options(isolation_level="AUTOCOMMIT")
        self._committer = GroupCommitter(self.writing)
        self._disposed = False

    @property
    def url(self) -> str:
        return self._url

    @property
    def dialect(self) -> str:
        return self._dialect

    @property
    def committer(self) -> GroupCommitter:
        """Where `write` queues its work; participants (the event log) join it."""
        return self._committer

    def write_soon(self, work: Work[T]) -> asyncio.Future[T]:
        """Queue `work` for the next group commit (started on first use); see committer.py."""
        if not self._committer.started:
            if self._disposed:
                raise RuntimeError("the database was disposed")
            self._committer.start()
        return self._committer.submit(work)

    async def write(self, work: Work[T]) -> T:
        """Run `work` in a transaction shared with the other writes queued meanwhile; its result.

        Once queued the work is committed even if the caller is cancelled: the queue holds it,
        not the caller (a cancelled caller's result is dropped, never left unretrieved).
        """
        try:
            return await self.write_soon(work)
        except Exception as exc:
            raise_outage_as_domain_error(exc)
            raise

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[SqlConnection]:
        """A transaction of its own, committed on exit: for migrations and bulk deletes.

        Everyday writes go through `write`, which shares transactions. An outage on the way
        raises StorageUnavailable.
        """
        try:
            if self._sqlite is None:
                async with self._async.begin() as conn:
                    yield conn
                return
            assert self._write_lock is not None
            async with self._write_lock:
                with self._sqlite.connect() as sync:
                    sync = sync.execution_options(**{_IMMEDIATE: True})
                    with sync.begin():
                        yield InlineConnection(sync)
        except Exception as exc:
            raise_outage_as_domain_error(exc)
            raise

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[SqlConnection]:
        """A connection for reads; an outage on the way raises StorageUnavailable."""
        try:
            if self._sqlite is None:
                async with self._reader.connect() as conn:
                    yield conn
                return
            with self._sqlite.connect() as sync:
                yield InlineConnection(sync)
        except Exception as exc:
            raise_outage_as_domain_error(exc)
            raise

    async def migrate(self) -> None:
        """Bring the schema to the newest migration; a no-op when it is there already."""
        async with self.writing() as conn:
            await conn.run_sync(_upgrade, alembic_config(self._url))

    async def dispose(self) -> None:
        """Commits what is queued, then closes every connection."""
        self._disposed = True
        await self._committer.stop()
        if self._sqlite is not None:
            self._sqlite.dispose()
        else:
            await self._async.dispose()
