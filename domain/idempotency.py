"""InFlight: work being done now under a key, so a retry that races the original gets its result."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class InFlight(Generic[K, V]):
    """One entry per key while its work runs; others wait for its result instead of doing it again."""

    def __init__(self) -> None:
        self._futures: dict[K, asyncio.Future[V]] = {}

    def get(self, key: K) -> Awaitable[V] | None:
        """The result of the work under way for `key` (cancelling the wait leaves the work alone)."""
        future = self._futures.get(key)
        return None if future is None else asyncio.shield(future)

    @asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[Callable[[V], V]]:
        """Claim `key` for the block; the block hands its result through `done(result)`.

        A block that raises passes its error to everyone waiting. Synchronous up to the first
        await of the block, so two claims of one key cannot both start.
        """
        if key in self._futures:
            raise RuntimeError(f"{key!r} is already in flight")
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._futures[key] = future

        def done(result: V) -> V:
            future.set_result(result)
            return result

        try:
            yield done
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so an unawaited failure is not reported twice
            raise
        finally:
            del self._futures[key]
            if not future.done():
                future.cancel()
