"""The connection repositories see: AsyncConnection on PostgreSQL, InlineConnection on SQLite."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, Result
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from domain.errors import StorageUnavailable

T = TypeVar("T")


# SQLSTATE classes of a server that is away rather than a statement that is wrong: connection
# exceptions (08), insufficient resources (53: too many connections), operator intervention (57:
# shutting down, starting up, "cannot connect now"), system errors (58).
_OUTAGE_SQLSTATE_CLASSES = ("08", "53", "57", "58")


def is_database_outage(exc: BaseException) -> bool:
    """The database itself failed (unreachable, gone, restarting, timed out), not a statement's data."""
    if isinstance(exc, StorageUnavailable):  # already translated (Database.writing, reading)
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            return True
        state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return isinstance(state, str) and state[:2] in _OUTAGE_SQLSTATE_CLASSES
    return isinstance(exc, OSError | TimeoutError | ConnectionError)


def upsert_into(dialect: Dialect, table: Table) -> Any:
    """INSERT of the dialect's own kind, which knows ON CONFLICT (PostgreSQL and SQLite both)."""
    return (postgresql.insert if dialect.name == "postgresql" else sqlite.insert)(table)


DATABASE_AWAY = "The database is not answering just now; send that again in a moment."


def raise_outage_as_domain_error(exc: BaseException) -> None:
    """An outage becomes StorageUnavailable: nothing outside the adapters knows a driver's errors."""
    if is_database_outage(exc):
        raise StorageUnavailable(DATABASE_AWAY) from exc


class SqlConnection(Protocol):
    """What repositories use of a connection: AsyncConnection (PostgreSQL) or InlineConnection."""

    @property
    def dialect(self) -> Dialect: ...

    async def execute(self, statement: Any, parameters: Any = None) -> Result[Any]: ...

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T: ...


class InlineConnection:
    """An SQLAlchemy Connection with AsyncConnection's calling convention; never suspends."""

    __slots__ = ("_sync",)

    def __init__(self, sync: Connection) -> None:
        self._sync = sync

    @property
    def dialect(self) -> Dialect:
        return self._sync.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> Result[Any]:
        return self._sync.execute(statement, parameters)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(self._sync, *args)




def escape_like(text: str) -> str:
    """`text` as a literal inside a LIKE pattern whose escape character is a backslash."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
