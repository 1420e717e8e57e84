"""Housekeeping: lease this process's runs, end the runs nobody runs any more, sweep, prune."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Protocol

from domain.approvals import WaitingRuns
from domain.context import context_of_run
from domain.entities import AuditAction, AuditEntry, Run, RunStatus
from domain.errors import LeaseLost, StorageUnavailable
from domain.events import AgentError, AgentStarted
from domain.factory import ExecutionEngineFactory
from domain.leases import INTERRUPTED, INTERRUPTED_MESSAGE, LeasePolicy
from domain.ports import AuditLog, Clock, EventLog, RunRepository
from domain.runs import RunRegistry

log = logging.getLogger(__name__)


class Resumer(Protocol):
    def resume(self, run: Run) -> None:
        """Go on with a run this process took over (ChatService.resume)."""


class Housekeeper:
    """Every run ends with exactly one terminal event, whoever ends it.

    Runs waiting for an approval hold no lease and are never taken over: their question lapses
    (approvals.timeout_s) and they end cancelled, by whichever process sweeps first.

    A run whose process stopped is taken over with the next lease epoch (so the old holder's
    writes are refused): a process that restarts takes back, at once, the runs it held before
    (its owner name is stable across restarts); any process takes the runs whose lease lapsed
    one ttl ago (an owner that is only slow renews in time). A run taken over goes on here from
    its last checkpoint (queued ones from their start, in their order), at most `max_takeovers`
    times; once more and it ends as `interrupted`. This process also ends its own stranded runs
    (their task ended while the database was away) as soon as the database answers again.
    """

    def __init__(
        self,
        *,
        runs: RunRepository,
        events: EventLog,
        factory: ExecutionEngineFactory,
        registry: RunRegistry,
        audit: AuditLog,
        clock: Clock,
        lease: LeasePolicy,
        retention: timedelta,
        resumer: Resumer,
        max_takeovers: int,
        waiting: WaitingRuns,
    ) -> None:
        self._runs = runs
        self._events = events
        self._factory = factory
        self._registry = registry
        self._audit = audit
        self._clock = clock
        self._lease = lease
        self._retention = retention
        self._resumer = resumer
        self._max_takeovers = max_takeovers
        self._waiting = waiting
        self._last_prune = None

    @property
    def _ttl(self) -> timedelta:
        return timedelta(seconds=self._lease.ttl_s)

    async def renew_leases(self) -> int:
        """Only the runs a task of this process runs: a run nobody runs must lapse, to be ended."""
        return await self._runs.renew_leases(self._lease.owner, self._clock.now() + self._ttl,
                                             self._registry.held())

    async def take_back_at_boot(self) -> list[Run]:
        """The runs this process's predecessor (same owner name) held: nobody runs them now."""
        taken = await self._runs.take_over(new_owner=self._lease.owner,
                                           until=self._clock.now() + self._ttl,
                                           previous_owner=self._lease.owner)
        return await self._go_on(taken, "of this process before it restarted")

    async def recover_orphans(self) -> list[Run]:
        """End every run whose owner stopped renewing its lease one ttl ago, and tell its user."""
        now = self._clock.now()
        taken = await self._runs.take_over(new_owner=self._lease.owner, until=now + self._ttl,
                                           lapsed_before=now - self._ttl)
        return await self._go_on(taken, "of a stopped process")

    async def _go_on(self, taken: Iterable[Run], whose: str) -> list[Run]:
        """Resume what may go on, end the rest; returns the runs taken."""
        taken = list(taken)
        resumable: list[Run] = []
        past_limit: list[Run] = []
        for run in taken:
            (resumable if run.takeovers <= self._max_takeovers else past_limit).append(run)
        for _ in await self._end_all(past_limit, whose):
            self._registry.taken_over("interrupted")
        # Started runs first, then queued ones, each in the order they were made: a thread's lane
        # then holds them as it did in the process that stopped.
        resumable.sort(key=lambda run: (run.status is not RunStatus.RUNNING, run.created_at, run.id))
        for run in resumable:
            self._resumer.resume(run)
            self._registry.taken_over("resumed")
        if resumable:
            log.warning("%d runs %s go on here: %s", len(resumable), whose,
                        ", ".join(run.id for run in resumable[:20]) + (" ..." if len(resumable) > 20 else ""))
        return taken

    async def end_stranded(self) -> list[Run]:
        """Runs of this process whose end could not be stored (the database was away)."""
        return await self._end_all(self._registry.stranded(), "left without an end by an outage")

    async def _end_all(self, runs: Iterable[Run], whose: str) -> list[Run]:
        """Together, not one by one: their terminal events share the group commits (measured: 50
        runs ended one at a time after an outage took 3-9 s, each waiting for its own commit)."""
        runs = list(runs)
        done = await asyncio.gather(*(self._end_interrupted(run) for run in runs))
        ended = [run for run, ok in zip(runs, done, strict=True) if ok]
        if ended:
            log.warning("%d runs %s ended as interrupted: %s", len(ended), whose,
                        ", ".join(run.id for run in ended[:20]) + (" ..." if len(ended) > 20 else ""))
        return ended

    async def _end_interrupted(self, run: Run) -> bool:
        """Send the run's terminal event (which stores its end); False if the database is away."""
        context = context_of_run(run, request_id="housekeeping", created_at=self._clock.now())
        try:
            last = await self._events.last_seq(run.id)
            emitter = self._factory.emitter_for(context, after_seq=last)
            if last == 0:
                await emitter.emit(AgentStarted("recovery"))
            await emitter.emit(AgentError(code=INTERRUPTED, message=INTERRUPTED_MESSAGE))
        except StorageUnavailable:
            self._registry.strand(run)  # still ours, with its lease: try again on the next beat
            return False
        except LeaseLost:
            self._registry.unstrand(run.id)  # another process took it over and ends it
            return False
        self._registry.unstrand(run.id)
        self._registry.ended(run, RunStatus.FAILED, INTERRUPTED)
        self._audit.record(AuditEntry(user_id=run.user_id, action=AuditAction.RUN_ENDED,
                                      at=self._clock.now(), run_id=run.id, outcome="failed",
                                      detail=INTERRUPTED))
        return True

    async def prune_events(self) -> int:
        now = self._clock.now()
        if self._last_prune is not None and now - self._last_prune < timedelta(hours=1):
            return 0
        self._last_prune = now
        return await self._events.prune(now - self._retention)

    async def boot(self) -> None:
        """Before the process takes new runs: end what its predecessor and dead processes left."""
        await self.take_back_at_boot()
        await self.recover_orphans()
        await self._waiting.expire()
        await self._factory.sweep()
        await self.prune_events()

    async def run_forever(self) -> None:
        """Leases are renewed on their own beat, never late behind a slow sweep or prune."""
        await asyncio.gather(self._every(self._renew_and_end_stranded),
                             self._every(self._sweep_and_prune))

    async def _renew_and_end_stranded(self) -> None:
        await self.renew_leases()
        await self.end_stranded()

    async def _sweep_and_prune(self) -> None:
        await self.recover_orphans()
        await self._waiting.expire()
        await self._factory.sweep()
        await self.prune_events()

    async def _every(self, work: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(self._lease.interval_s)
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except StorageUnavailable:
                log.warning("housekeeping waits for the database; trying again in %.1f s",
                            self._lease.interval_s)
            except Exception:
                log.exception("housekeeping failed; trying again in %.1f s", self._lease.interval_s)
