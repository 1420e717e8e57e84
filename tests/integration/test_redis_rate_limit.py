"""The message rate in Redis: one bucket per user for every process, and a fallback while Redis is away."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime

from adapters.redis_rate_limit import RedisMessageRateLimit
from domain.ratelimit import RateLimiter
from tests.fakes import FixedClock

REDIS_URL = "redis://127.0.0.1:6379/0"  # the machine's Redis (CI starts it); down fails, never skips


def limit(prefix: str, per_minute: int, url: str = REDIS_URL) -> RedisMessageRateLimit:
    clock = FixedClock(datetime(2026, 11, 21, 12, 0, tzinfo=UTC))
    return RedisMessageRateLimit(url, prefix, per_minute=per_minute,
                                 fallback=RateLimiter(per_minute=per_minute, clock=clock))


async def test_two_processes_share_one_bucket_per_user() -> None:
    prefix = f"gp-test-{secrets.token_hex(6)}"
    a, b = limit(prefix, 3), limit(prefix, 3)  # two processes, one Redis
    try:
        taken = [await a.take("usr_alice"), await b.take("usr_alice"), await a.take("usr_alice")]
        assert taken == [0.0, 0.0, 0.0]
        wait = await b.take("usr_alice")  # the fourth in a minute, whichever process gets it
        assert 15 < wait <= 20  # one token every 20 s at 3 a minute; a little time has passed
        assert await b.take("usr_bob") == 0.0  # another user has a bucket of their own
    finally:
        await a.aclose()
        await b.aclose()


async def test_concurrent_takes_never_hand_out_more_than_the_bucket_holds() -> None:
    prefix = f"gp-test-{secrets.token_hex(6)}"
    processes = [limit(prefix, 5) for _ in range(4)]
    try:
        waits = await asyncio.gather(*(p.take("usr_alice") for p in processes for _ in range(5)))
        assert sum(w == 0.0 for w in waits) == 5  # the script is atomic: no token taken twice
    finally:
        await asyncio.gather(*(p.aclose() for p in processes))


async def test_without_redis_the_process_counts_on_its_own() -> None:
    unreachable = limit("gp-test", 2, url="redis://127.0.0.1:1/0")
    try:
        waits = [await unreachable.take("usr_alice") for _ in range(3)]
        assert waits[:2] == [0.0, 0.0] and waits[2] > 0  # the fallback bucket still limits
    finally:
        await unreachable.aclose()
