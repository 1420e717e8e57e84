"""Process control: a cancel to the process that runs the run; a session revocation to every process."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

OnCancel = Callable[[str, str], bool]  # (run_id, reason) -> whether the run is here
OnRevoke = Callable[[str, str], None]  # (user_id, reason): close the user's sockets here


class LocalRunControl:
    """One process: every live run and every socket is here, so there is nowhere to forward to."""

    def __init__(self) -> None:
        self._on_revoke: OnRevoke | None = None

    async def start(self, on_cancel: OnCancel, on_revoke: OnRevoke) -> None:
        self._on_revoke = on_revoke

    async def revoke_sessions(self, user_id: str, reason: str) -> None:
        if self._on_revoke is not None:
            self._on_revoke(user_id, reason)

    async def request_cancel(self, owner: str, run_id: str, reason: str) -> None:
        logger.warning("run {} belongs to process {}, which is not this one and not reachable "
                       "without the redis bus; it ends when its lease lapses", run_id, owner)

    async def stop(self) -> None:
        return None


class RedisRunControl:
    """Each process listens on its own channel and on one for all.

    A cancel is published to the owner's channel; a revocation (logout, password change) to
    the channel for all, so the user's sockets close on every process, not only on the one
    that took the request. If Redis does not answer, this process closes its own at least.
    """

    def __init__(self, url: str, prefix: str, owner: str) -> None:
        self._redis = Redis.from_url(url, socket_keepalive=True, socket_connect_timeout=5)
        self._prefix = prefix
        self._owner = owner
        self._task: asyncio.Task[None] | None = None
        self._on_revoke: OnRevoke | None = None

    def _channel(self, owner: str) -> str:
        return f"{self._prefix}:control:{owner}"

    @property
    def _everyone(self) -> str:
        return f"{self._prefix}:control-all"

    async def start(self, on_cancel: OnCancel, on_revoke: OnRevoke) -> None:
        self._on_revoke = on_revoke
        subscribed = asyncio.Event()
        self._task = asyncio.create_task(self._listen(on_cancel, on_revoke, subscribed),
                                         name="run-control")
        async with asyncio.timeout(10):
            await subscribed.wait()

    async def revoke_sessions(self, user_id: str, reason: str) -> None:
        try:
            await self._redis.publish(self._everyone, json.dumps({"revoke": user_id, "reason": reason}))
        except (RedisError, OSError) as exc:
            logger.warning("could not tell the other processes of a revocation ({}); closing "
                           "this process's sockets only", type(exc).__name__)
            if self._on_revoke is not None:
                self._on_revoke(user_id, reason)

    async def request_cancel(self, owner: str, run_id: str, reason: str) -> None:
        try:
            await self._redis.publish(self._channel(owner),
                                      json.dumps({"run_id": run_id, "reason": reason}))
        except (RedisError, OSError) as exc:
            logger.warning("could not forward the cancel of run {} ({})", run_id, type(exc).__name__)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._redis.aclose()

    async def _listen(self, on_cancel: OnCancel, on_revoke: OnRevoke, subscribed: asyncio.Event) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel(self._owner), self._everyone)
                    subscribed.set()
                    async for message in pubsub.listen():
                        if message["type"] != "message":
                            continue
                        try:
                            order = json.loads(message["data"])
                            if "revoke" in order:
                                on_revoke(str(order["revoke"]), str(order["reason"]))
                            else:
                                on_cancel(str(order["run_id"]), str(order["reason"]))
                        except (ValueError, KeyError, TypeError):
                            logger.warning("ignored a malformed control message")
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                logger.warning("run control lost Redis ({}); retrying", type(exc).__name__)
                await asyncio.sleep(1)
