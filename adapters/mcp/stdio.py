"""Operator stdio MCP servers: one process per server, started on first use and shared by every
user's operations (it carries no user's credentials: the operator configured it), started again
after it breaks. Starting one costs ~0.6 s and stopping it ~0.3 s, far too much per operation.

The SDK's client lives in a task of its own (its task groups must be entered and left by one
task); operations from any task send through it, concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED

log = logging.getLogger(__name__)

T = TypeVar("T")
STOP_TIMEOUT_S = 5.0
Key = tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]]


class _Session:
    def __init__(self) -> None:
        self.ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        # A start that failed with no one waiting must not be reported as never retrieved.
        self.ready.add_done_callback(lambda future: future.cancelled() or future.exception())
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class StdioSessions:
    def __init__(self, *, client_info: types.Implementation, timeout_s: float) -> None:
        self._client_info = client_info
        self._timeout_s = timeout_s
        self._sessions: dict[Key, _Session] = {}
        self._closed = False

    async def run(self, name: str, command: tuple[str, ...], env: Mapping[str, str],
                  operation: Callable[[Client], Awaitable[T]]) -> T:
        if self._closed:
            raise RuntimeError("the MCP client is closed")
        key: Key = (name, command, tuple(sorted(env.items())))
        session = self._sessions.get(key)
        if session is None:
            session = self._start(key, command, env)
        client = await asyncio.shield(session.ready)
        try:
            return await operation(client)
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                self._discard(key, session)
            raise
        except Exception:
            self._discard(key, session)  # a dead process, a broken pipe: a fresh one next time
            raise

    def _start(self, key: Key, command: tuple[str, ...], env: Mapping[str, str]) -> _Session:
        session = self._sessions[key] = _Session()
        params = StdioServerParameters(command=command[0], args=list(command[1:]), env=dict(env) or None)
        session.task = asyncio.create_task(self._own(key, session, params), name=f"mcp-stdio-{key[0]}")
        return session

    async def _own(self, key: Key, session: _Session, params: StdioServerParameters) -> None:
        try:
            async with Client(params, cache=None, client_info=self._client_info,
                              read_timeout_seconds=self._timeout_s) as client:
                session.ready.set_result(client)
                await session.stop.wait()
        except Exception as exc:
            if not session.ready.done():
                session.ready.set_exception(exc)
            else:
                log.info("MCP stdio server %s ended: %s", key[0], type(exc).__name__)
        finally:
            if not session.ready.done():
                session.ready.cancel()
            if self._sessions.get(key) is session:
                del self._sessions[key]

    def _discard(self, key: Key, session: _Session) -> None:
        if self._sessions.get(key) is session:
            del self._sessions[key]
        session.stop.set()

    async def aclose(self) -> None:
        """Stop every server process (each gets STOP_TIMEOUT_S to end)."""
        self._closed = True
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for session in sessions:
            session.stop.set()
        tasks: list[asyncio.Task[Any]] = [session.task for session in sessions if session.task is not None]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
