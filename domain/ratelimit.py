"""A token bucket per user: how many chat messages one user may send per minute.

Each user's bucket holds up to `per_minute` tokens and refills at `per_minute` tokens a minute,
so a user may send `per_minute` messages at once and then one every `60 / per_minute` seconds.
Time comes from the Clock port, so tests move it by hand.

Memory stays bounded: a bucket untouched for a whole window (a minute) is full again, which is
the same as having no bucket, so it is dropped. Buckets are kept in the order they were last
touched, and each call drops the stale ones from the front: only users who sent something in
the last minute take any memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from domain.errors import RateLimited
from domain.ports import Clock

WINDOW_S = 60.0


def rate_limited(per_minute: int, wait_s: float) -> RateLimited:
    """The error for a user over the message rate, saying when to send again."""
    seconds = max(1, math.ceil(wait_s))
    return RateLimited(
        f"You sent {per_minute} messages in the last minute, the most allowed; "
        f"send again in {seconds} second{'s' if seconds != 1 else ''}.",
        retry_after_s=wait_s,
    )


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float  # seconds since the epoch, from the clock


class RateLimiter:
    """At most `per_minute` acquisitions a minute per key (a user id), with bursts up to that many."""

    def __init__(self, *, per_minute: int, clock: Clock) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be 1 or more")
        self._capacity = float(per_minute)
        self._rate = per_minute / WINDOW_S  # tokens per second
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def per_minute(self) -> int:
        return int(self._capacity)

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def _drop_idle(self, now: float) -> None:
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if now - bucket.updated < WINDOW_S:
                return
            del self._buckets[key]

    def _refilled(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            return _Bucket(tokens=self._capacity, updated=now)
        elapsed = max(0.0, now - bucket.updated)  # a clock set back refills nothing, takes nothing
        bucket.tokens = min(self._capacity, bucket.tokens + elapsed * self._rate)
        bucket.updated = max(bucket.updated, now)
        return bucket

    def try_acquire(self, key: str) -> float:
        """Take one token: 0.0 if it was there, else the seconds until one will be (nothing taken)."""
        now = self._now()
        self._drop_idle(now)
        bucket = self._refilled(key, now)
        self._buckets[key] = bucket
        self._buckets.move_to_end(key)  # the most recently touched last: idle ones are at the front
        if bucket.tokens < 1.0:
            return (1.0 - bucket.tokens) / self._rate
        bucket.tokens -= 1.0
        return 0.0

    async def take(self, key: str) -> float:
        """The MessageRateLimit port: try_acquire, for one process."""
        return self.try_acquire(key)

    def acquire(self, key: str) -> None:
        """Take one token, or raise RateLimited saying when to send again."""
        wait_s = self.try_acquire(key)
        if wait_s > 0:
            raise rate_limited(self.per_minute, wait_s)

    def remaining(self, key: str) -> int:
        """Whole tokens the key has now (for tests and diagnostics); nothing taken."""
        now = self._now()
        bucket = self._buckets.get(key)
        if bucket is None:
            return int(self._capacity)
        elapsed = max(0.0, now - bucket.updated)
        return int(min(self._capacity, bucket.tokens + elapsed * self._rate))

    def __len__(self) -> int:
        """Buckets held: only users who sent something within the last window."""
        self._drop_idle(self._now())
        return len(self._buckets)
