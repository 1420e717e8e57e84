"""Real databases for integration tests: a SQLite file, and a fresh PostgreSQL database per test."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
from alembic.config import Config

from adapters.persistence.database import Database, alembic_config

PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "test"}
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(**PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An empty database, not migrated; PostgreSQL being down fails the test, never skips it."""
    if request.param == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'var' / 'goldenpath.db'}")
        try:
            yield db
        finally:
            await db.dispose()
        return
    name = f"gp_{secrets.token_hex(8)}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    db = Database(PG_URL.format(name=name))
    try:
        yield db
    finally:
        await db.dispose()
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(database: Database) -> Database:
    await database.migrate()
    return database


async def migrate_to(db: Database, step: Callable[[Config, str], None], revision: str) -> None:
    """Run one Alembic command (upgrade or downgrade) to `revision` on the test database."""

    def run(connection: object) -> None:
        config = alembic_config(db.url)
        config.attributes["connection"] = connection
        step(config, revision)

    async with db.writing() as conn:
        await conn.run_sync(run)
