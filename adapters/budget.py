"""Token buckets for the work one client may cost the server: frames read, bytes parsed, events replayed."""

from __future__ import annotations

import asyncio
import time

MIN_FRAME_COST = 1024
REFUSED_SOCKET_COST = 16 * 1024
# A frame that asks the database (a chat's duplicate lookup, a cancel, a resume's first read) costs
# ~1 ms of the event loop before any answer, refused or not: a flood of chats over the message
# rate cost the others 1.6x until these were charged.
DATABASE_FRAME_COST = 8 * 1024


class TokenBucket:
    """`burst` units at once, then `per_s` a second; a charge past it says how long to wait."""

    def __init__(self, per_s: float, burst: float) -> None:
        self._per_s = per_s
        self._burst = float(burst)
        self._tokens = self._burst
        self._at = time.monotonic()

    def charge(self, cost: float) -> float:
        """Take `cost` units; the seconds until the bucket is out of debt (0 when it is not in debt)."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._per_s) - cost
        self._at = now
        return max(0.0, -self._tokens / self._per_s)


class UserBudget:
    """Shared by one user's sockets on this process, so that opening more sockets buys no more of it.

    A user in debt has its sockets read later: the cost of its floods falls on its own frames.
    Its sockets replay one at a time (`replay_turn`): twenty sockets resuming at once take turns
    on the event loop as one, not twenty times over beside everyone else's runs.
    """

    def __init__(self, *, bytes_per_s: float, bytes_burst: float, replay_per_s: float,
                 replay_burst: float) -> None:
        self._bytes = TokenBucket(bytes_per_s, bytes_burst)
        self._replayed = TokenBucket(replay_per_s, replay_burst)
        self._until = 0.0
        self.replay_turn = asyncio.Lock()

    def read(self, size: int) -> None:
        # A frame costs its parse and answer whatever its size: small ones count as 1 KiB.
        self._owe(self._bytes.charge(max(size, MIN_FRAME_COST)))

    def asked_database(self) -> None:
        self._owe(self._bytes.charge(DATABASE_FRAME_COST))

    def refused_socket(self) -> None:
        # A socket over the cap costs an upgrade, a token check and a close handshake: ~2 ms,
        # as much as parsing and answering a 16 KiB frame.
        self._owe(self._bytes.charge(REFUSED_SOCKET_COST))

    def replayed(self, events: int) -> None:
        self._owe(self._replayed.charge(events))

    def _owe(self, delay: float) -> None:
        self._until = max(self._until, time.monotonic() + delay)

    def wait_s(self) -> float:
        """How long the user's next frame waits."""
        return max(0.0, self._until - time.monotonic())
