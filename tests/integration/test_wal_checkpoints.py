"""SQLite's WAL checkpoints run on their own thread (adapters/persistence/wal_checkpoints.py):
the server's connections never checkpoint in a commit, and the log still stays bounded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from adapters.persistence.database import Database
from tests.helpers import eventually

ROW_BYTES = 40_000
BATCH = 20


async def test_commits_leave_checkpoints_to_the_thread_and_the_log_stays_bounded(tmp_path: Path) -> None:
    file = tmp_path / "x.db"
    db = Database(f"sqlite:///{file}")
    try:
        async with db.writing() as conn:
            await conn.execute(text("CREATE TABLE blobs (b BLOB)"))
        async with db.reading() as conn:
            assert (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar() == 0
        checkpointer = db._checkpoints
        assert checkpointer is not None and checkpointer.started

        async def insert(conn) -> None:
            await conn.execute(text(f"INSERT INTO blobs VALUES (randomblob({ROW_BYTES}))"))

        largest = 0
        for _ in range(10):  # 10 batches of 0.8 MB: 8 MB in all, which an unchecked log would hold
            for _ in range(BATCH):
                await db.write(insert)
            largest = max(largest, (tmp_path / "x.db-wal").stat().st_size)
            seen = checkpointer.checkpoints
            # A checkpoint that began after the batch was committed has copied all of it.
            await eventually(lambda seen=seen: checkpointer.checkpoints >= seen + 2,
                             what="two checkpoints after the batch")
        # Each batch after a complete checkpoint starts the log from its beginning again.
        assert largest < 3 * BATCH * ROW_BYTES, largest
    finally:
        await db.dispose()
    assert not checkpointer._thread.is_alive()
    with sqlite3.connect(file) as check:  # everything is in the database file
        assert check.execute("SELECT count(*) FROM blobs").fetchone() == (10 * BATCH,)


async def test_a_database_in_memory_keeps_sqlite_s_own_checkpoints() -> None:
    db = Database("sqlite:///:memory:")
    try:
        assert db._checkpoints is None
    finally:
        await db.dispose()
