"""SQLite's WAL checkpoints on a thread of their own, not inside a commit on the event loop.

By default SQLite checkpoints in the commit that takes the write-ahead log past 1,000 pages:
that commit copies the log into the database file and syncs it, on the event loop, where every
SQLite statement runs (database.py). py-spy (`--native`) of the 100-user bench put a third of
the commits' time in those checkpoints. Here the server's connections never checkpoint
(`wal_autocheckpoint=0`); a thread with its own connection does, PASSIVE (it never waits for a
reader or writer, and none waits for it), a few times a second. The sqlite3 module lets go of
the GIL while SQLite works, so the copy and the sync overlap the loop's work. Once a checkpoint
has caught up, the next write starts the log from its beginning again, as with SQLite's own.
"""

from __future__ import annotations

import sqlite3
import threading

from loguru import logger

CHECKPOINT_EVERY_S = 0.25


class WalCheckpointer:
    """Checkpoints the database file at `path` every `every_s` from `start` to `stop`."""

    def __init__(self, path: str, every_s: float = CHECKPOINT_EVERY_S) -> None:
        self._path = path
        self._every_s = every_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.checkpoints = 0

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sqlite-wal-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Waits for a checkpoint under way (it never waits on anyone, so not long)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        connection = sqlite3.connect(self._path, check_same_thread=False)
        failing = False
        try:
            while not self._stopping.wait(self._every_s):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                    failing = False
                except sqlite3.Error as exc:
                    if not failing:  # one line per spell of failures, not one per try
                        logger.warning("SQLite checkpoint failed ({}); trying again", exc)
                    failing = True
        finally:
            connection.close()
