"""Waiting helpers every test shares: each wait is for a state, with a deadline and a clear failure."""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Generous on purpose: a wait ends as soon as its state is reached, so only a failing test pays
# for a long deadline, while a short one fails a passing test on a loaded two-core machine.
DEFAULT_TIMEOUT_S = 10.0


async def eventually(check: Callable[[], T | Awaitable[T]], timeout: float = DEFAULT_TIMEOUT_S,
                     what: str | Callable[[], str] = "the condition", interval: float = 0.02) -> T:
    """Call `check` (plain or async) until it returns something truthy, and return that.

    Raises AssertionError naming `what` (a callable is asked only then, for the state at the
    deadline) and the last value seen, when `timeout` seconds pass first.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"{described} did not happen within {timeout} s (last: {result!r})")
        await asyncio.sleep(interval)


def free_port() -> int:
    """A TCP port nobody listens on right now (for a process that must be told its port up front)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
