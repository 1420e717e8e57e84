"""Housekeeping: lease this process's runs, fail the runs of processes that died, sweep, prune."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from domain.context import UserExecutionContext
from domain.entities import AuditAction, AuditEntry, Run
from domain.events import AgentError, AgentStarted
from domain.factory import ExecutionEngineFactory
from domain.leases import LeasePolicy
from domain.ports import AuditLog, Clock, EventLog, RunRepository

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"
INTERRUPTED_MESSAGE = ("The server running this request stopped before it finished; "
                       "please send your message again.")



class Housekeeper:
    def __init__(
        self,
        *,
        runs: RunRepository,
        events: EventLog,
        factory: ExecutionEngineFactory,
        audit: AuditLog,
        clock: Clock,
        lease: LeasePolicy,
        retention: timedelta,
    ) -> None:
        self._runs = runs
        self._events = events
        self._factory = factory
        self._audit = audit
        self._clock = clock
        self._lease = lease
        self._retention = retention
        self._last_prune = None

    async def renew_leases(self) -> int:
        return await self._runs.renew_leases(self._lease.owner,
                                             self._clock.now() + timedelta(seconds=self._lease.ttl_s))

    async def recover_orphans(self) -> list[Run]:
        """Fail every run whose owner stopped renewing it, and tell its user through its events.

        A lease must have lapsed for one more ttl: an owner that is only slow (a busy loop, a
        slow database) renews in time, and only one that is gone loses its runs.
        """
        lapsed_before = self._clock.now() - timedelta(seconds=self._lease.ttl_s)
        orphans = list(await self._runs.claim_orphans(lapsed_before, INTERRUPTED))
        for run in orphans:
            context = UserExecutionContext(user_id=run.user_id, thread_id=run.thread_id, run_id=run.id,
                                           request_id="housekeeping", created_at=self._clock.now())
            last = await self._events.last_seq(run.id)
            emitter = self._factory.emitter_for(context, after_seq=last)
            if last == 0:
                await emitter.emit(AgentStarted("recovery"))
            await emitter.emit(AgentError(code=INTERRUPTED, message=INTERRUPTED_MESSAGE))
            self._audit.record(AuditEntry(user_id=run.user_id, action=AuditAction.RUN_ENDED,
                                          at=self._clock.now(), run_id=run.id, outcome="failed",
                                          detail=INTERRUPTED))
            log.warning("run %s of a stopped process ended as interrupted", run.id)
        return orphans

    async def prune_events(self) -> int:
        now = self._clock.now()
        if self._last_prune is not None and now - self._last_prune < timedelta(hours=1):
            return 0
        self._last_prune = now
        return await self._events.prune(now - self._retention)

    async def tick(self) -> None:
        await self.renew_leases()
        await self.recover_orphans()
        await self._factory.sweep()
        await self.prune_events()

    async def run_forever(self) -> None:
        """Leases are renewed on their own beat, never late behind a slow sweep or prune."""
        await asyncio.gather(self._every(self.renew_leases), self._every(self._sweep_and_prune))

    async def _sweep_and_prune(self) -> None:
        await self.recover_orphans()
        await self._factory.sweep()
        await self.prune_events()

    async def _every(self, work: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(self._lease.interval_s)
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("housekeeping failed; trying again in %.1f s", self._lease.interval_s)
