"""RedisEventBus: events fan out through Redis pub/sub to every process that holds sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from adapters.event_bus import BusListener, Envelope, decode, encode

FIRST_SUBSCRIBE_S = 10.0
MAX_BACKOFF_S = 1.0
REPUBLISH_BATCH = 500


class RedisEventBus:
    """Every process publishes to one channel and delivers what it receives to its own sockets.

    While Redis is away, this process still delivers its own events to its own sockets, keeps
    them, and tells the listener. When Redis is back it publishes the kept events again, in order
    (other processes may have caught up from the log before these were stored: sockets drop
    repeats by seq, so twice is harmless and never is not), and the listener catches its own
    sockets up from the log.
    """

    def __init__(self, url: str, channel: str) -> None:
        self._redis = Redis.from_url(url, socket_keepalive=True, health_check_interval=10,
                                     socket_connect_timeout=5)
        self._channel = channel
        self._listener: BusListener | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._connected = False
        self._unsent: list[Envelope] = []
        self._retrying: asyncio.Task[None] | None = None

    async def start(self, listener: BusListener) -> None:
        self._listener = listener
        self._task = asyncio.create_task(self._listen(), name="redis-bus")
        try:
            async with asyncio.timeout(FIRST_SUBSCRIBE_S):
                await self._subscribed.wait()
        except TimeoutError:
            await self.stop()
            raise RuntimeError(f"Redis did not answer within {FIRST_SUBSCRIBE_S:g} s; "
                               "check GOLDENPATH_BUS__REDIS_URL") from None

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        if not envelopes or (not self._unsent and await self._try_publish(envelopes)):
            return
        # Local sockets get them now; other processes get them when Redis returns (_republish).
        self._unsent.extend(envelopes)
        if self._listener is not None:
            for envelope in envelopes:
                self._listener.deliver(envelope)
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.create_task(self._retry_unsent(), name="redis-bus-republish")

    async def _try_publish(self, envelopes: Sequence[Envelope]) -> bool:
        """One round trip for the lot. A failure part-way is retried whole: sockets drop repeats."""
        for _ in range(2):  # the first use of a connection Redis closed fails once, then reconnects
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for envelope in envelopes:
                        pipe.publish(self._channel, encode(envelope))
                    await pipe.execute()
                return True
            except (RedisError, OSError) as exc:
                failure = type(exc).__name__
        logger.warning("could not publish to Redis ({}); delivering locally for now", failure)
        return False

    async def _retry_unsent(self) -> None:
        delay = 0.1
        while self._unsent:
            await self._republish()
            if self._unsent:
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

    async def _republish(self) -> None:
        while self._unsent:
            batch = self._unsent[:REPUBLISH_BATCH]
            if not await self._try_publish(batch):
                return
            del self._unsent[:len(batch)]

    async def stop(self) -> None:
        if self._retrying is not None:
            self._retrying.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._redis.aclose()

    def _lost(self) -> None:
        if self._connected:
            self._connected = False
            if self._listener is not None:
                self._listener.bus_lost()

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    restored = self._subscribed.is_set() and not self._connected
                    self._connected = True
                    self._subscribed.set()
                    backoff = 0.1
                    if restored and self._listener is not None:
                        logger.info("Redis is back; catching sockets up")
                        await self._republish()
                        await self._listener.bus_restored()
                    async for message in pubsub.listen():
                        if message["type"] == "message" and self._listener is not None:
                            self._listener.deliver(decode(message["data"]))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                logger.warning("lost Redis ({}); retrying in {:.1f} s", type(exc).__name__, backoff)
                self._lost()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
