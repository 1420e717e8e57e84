"""The message rate shared by every process: the domain's token bucket, kept in Redis.

With N processes behind a load balancer, a bucket per process would let a user send N times
the limit. Here each user's bucket is one Redis hash, refilled and taken from by a Lua script,
atomically, on Redis's clock (so the processes' clocks need not agree). If Redis does not
answer, the process falls back to its own bucket: the limit still holds per process, and chat
keeps working.
"""

from __future__ import annotations

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from domain.ratelimit import WINDOW_S, RateLimiter

# KEYS[1]: the user's bucket. ARGV: capacity, tokens per second, seconds to keep an idle bucket.
# Returns the seconds to wait as a string (a Lua number would come back truncated to an integer).
_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1]) or capacity
local updated = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens < 1 then
  wait = (1 - tokens) / rate
else
  tokens = tokens - 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(math.max(updated, now)))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return tostring(wait)
"""


class RedisMessageRateLimit:
    """MessageRateLimit for several processes; `fallback` serves while Redis is away."""

    def __init__(self, url: str, prefix: str, *, per_minute: int, fallback: RateLimiter) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be 1 or more")
        self._redis = Redis.from_url(url, socket_keepalive=True, socket_connect_timeout=5)
        self._prefix = prefix
        self._per_minute = per_minute
        self._take = self._redis.register_script(_TAKE)
        self._fallback = fallback
        self._failing = False

    @property
    def per_minute(self) -> int:
        return self._per_minute

    async def take(self, key: str) -> float:
        try:
            wait = await self._take(keys=[f"{self._prefix}:rate:{key}"],
                                    args=[self._per_minute, self._per_minute / WINDOW_S, int(WINDOW_S) + 1])
        except (RedisError, OSError) as exc:
            if not self._failing:
                logger.warning("message rate: Redis did not answer ({}); counting in this process "
                               "until it does", type(exc).__name__)
                self._failing = True
            return await self._fallback.take(key)
        if self._failing:
            logger.info("message rate: Redis answers again")
            self._failing = False
        return float(wait)

    async def aclose(self) -> None:
        await self._redis.aclose()
