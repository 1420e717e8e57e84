"""The async database: one engine, serialised writes on SQLite, and Alembic migrations."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"
_IMMEDIATE = "goldenpath_sqlite_immediate"

_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
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


class Database:
    """SQLite (aiosqlite) or PostgreSQL (asyncpg); connects on first use, not before."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self._url = url
        parsed = make_url(url)
        self._dialect = parsed.get_backend_name()
        self._write_lock: asyncio.Lock | None = None
        if self._dialect == "sqlite":
            database = parsed.database
            if database and database != ":memory:" and not database.startswith("file:"):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            # SQLite has one writer per file: queue our writers here rather than on its busy lock.
            self._write_lock = asyncio.Lock()
            self._engine = create_async_engine(url, echo=echo)
            event.listen(self._engine.sync_engine, "connect", _set_sqlite_pragmas)
            event.listen(self._engine.sync_engine, "begin", _begin_sqlite)
        else:
            self._engine = create_async_engine(url, echo=echo, pool_pre_ping=True)

    @property
    def url(self) -> str:
        return self._url

    @property
    def dialect(self) -> str:
        return self._dialect

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncConnection]:
        """A transaction, committed on exit; the only writer of this process on SQLite."""
        async with contextlib.AsyncExitStack() as stack:
            if self._write_lock is not None:
                await stack.enter_async_context(self._write_lock)
            conn = await stack.enter_async_context(self._engine.connect())
            if self._write_lock is not None:
                await conn.execution_options(**{_IMMEDIATE: True})
            await stack.enter_async_context(conn.begin())
            yield conn

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            yield conn

    async def migrate(self) -> None:
        """Bring the schema to the newest migration; a no-op when it is there already."""
        async with self.writing() as conn:
            await conn.run_sync(_upgrade, alembic_config(self._url))

    async def dispose(self) -> None:
        await self._engine.dispose()
