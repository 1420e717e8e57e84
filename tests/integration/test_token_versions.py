"""users.token_version (migration 0003): bumped atomically by logout and password change, both databases."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from adapters.persistence.database import Database
from adapters.persistence.repositories import SqlAlchemyUserRepository
from adapters.persistence.tables import metadata
from domain.entities import User
from domain.errors import NotFound
from tests.integration.conftest import migrate_to

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


async def add_user(db: Database, user_id: str, password_hash: str = "h0") -> User:
    user = User(id=user_id, username=f"name-{user_id}", password_hash=password_hash, created_at=T0)
    await SqlAlchemyUserRepository(db).add(user)
    return user




async def user_columns(db: Database) -> list[str]:
    async with db.reading() as conn:
        return await conn.run_sync(lambda c: [col["name"] for col in inspect(c).get_columns("users")])


async def test_a_new_user_starts_at_version_zero(db: Database) -> None:
    users = SqlAlchemyUserRepository(db)
    alice = await add_user(db, "usr_a")
    assert alice.token_version == 0
    assert await users.get("usr_a") == alice
    assert await users.get_by_username("name-usr_a") == alice
    assert [u.token_version for u in await users.list()] == [0]


async def test_a_row_written_without_the_column_gets_the_server_default(db: Database) -> None:
    async with db.writing() as conn:
        await conn.execute(text(
            "INSERT INTO users (id, username, password_hash, created_at) "
            "VALUES ('usr_raw', 'raw', 'h', :at)"), {"at": T0})
    user = await SqlAlchemyUserRepository(db).get("usr_raw")
    assert user is not None and user.token_version == 0


async def test_bump_returns_the_new_version_and_touches_only_that_user(db: Database) -> None:
    users = SqlAlchemyUserRepository(db)
    await add_user(db, "usr_a")
    bob = await add_user(db, "usr_b")
    assert await users.bump_token_version("usr_a") == 1
    assert await users.bump_token_version("usr_a") == 2
    alice = await users.get("usr_a")
    assert alice is not None
    assert (alice.token_version, alice.password_hash) == (2, "h0")
    assert await users.get("usr_b") == bob


async def test_set_password_stores_the_hash_and_bumps_the_version(db: Database) -> None:
    users = SqlAlchemyUserRepository(db)
    await add_user(db, "usr_a")
    await add_user(db, "usr_b")
    await users.bump_token_version("usr_a")
    assert await users.set_password("usr_a", "$argon2id$new") == 2
    alice = await users.get("usr_a")
    assert alice is not None
    assert (alice.password_hash, alice.token_version) == ("$argon2id$new", 2)
    bob = await users.get("usr_b")
    assert bob is not None and (bob.password_hash, bob.token_version) == ("h0", 0)


async def test_an_unknown_user_is_not_found_and_nothing_changes(db: Database) -> None:
    users = SqlAlchemyUserRepository(db)
    await add_user(db, "usr_a")
    with pytest.raises(NotFound):
        await users.bump_token_version("usr_x")
    with pytest.raises(NotFound):
        await users.set_password("usr_x", "h1")
    alice = await users.get("usr_a")
    assert alice is not None and (alice.token_version, alice.password_hash) == (0, "h0")


async def test_concurrent_bumps_never_return_the_same_version(db: Database) -> None:
    """Two processes (two engines on one database) bumping at once: each gets its own version."""
    other = Database(db.url)
    try:
        await add_user(db, "usr_a")
        repos = [SqlAlchemyUserRepository(db), SqlAlchemyUserRepository(other)]
        bumps = [repos[i % 2].bump_token_version("usr_a") for i in range(10)]
        bumps += [repos[i % 2].set_password("usr_a", f"h{i}") for i in range(10)]
        versions = await asyncio.gather(*bumps)
    finally:
        await other.dispose()
    assert sorted(versions) == list(range(1, 21))
    alice = await SqlAlchemyUserRepository(db).get("usr_a")
    assert alice is not None and alice.token_version == 20


async def test_migration_0003_upgrades_and_downgrades(database: Database) -> None:
    await migrate_to(database, command.upgrade, "0002")
    before = await user_columns(database)
    assert "token_version" not in before
    async with database.writing() as conn:
        await conn.execute(text(
            "INSERT INTO users (id, username, password_hash, created_at) "
            "VALUES ('usr_old', 'old', 'h', :at)"), {"at": T0})
        # A thread referencing the user: the migration must not drop and copy `users` (SQLite).
        await conn.execute(text(
            "INSERT INTO threads (id, user_id, title, created_at, updated_at) "
            "VALUES ('thr_1', 'usr_old', 't', :at, :at)"), {"at": T0})

    await migrate_to(database, command.upgrade, "head")
    assert await user_columns(database) == [*before, "token_version"]
    users = SqlAlchemyUserRepository(database)
    old = await users.get("usr_old")
    assert old is not None and old.token_version == 0  # tokens issued before 0003 carry ver 0
    assert await users.bump_token_version("usr_old") == 1

    await migrate_to(database, command.downgrade, "0002")
    assert await user_columns(database) == before
    async with database.reading() as conn:
        rows = (await conn.execute(text("SELECT id, username FROM users"))).all()
        threads = (await conn.execute(text("SELECT id, user_id FROM threads"))).all()
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    assert (rows, threads, version) == ([("usr_old", "old")], [("thr_1", "usr_old")], "0002")

    await database.migrate()
    async with database.reading() as conn:
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        diff: list[Any] = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), metadata))
    assert (version, diff) == ("0008", [])
    again = await users.get("usr_old")
    assert again is not None and again.token_version == 0
