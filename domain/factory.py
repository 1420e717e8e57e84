"""ExecutionEngineFactory: the only code that constructs a UserExecutionEngine."""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from domain.approval_policy import ApprovalGate
from domain.checkpoints import Resumption
from domain.context import UserExecutionContext
from domain.emitter import RunEventEmitter
from domain.engine import _FACTORY_KEY, UserExecutionEngine
from domain.entities import AuditAction, AuditEntry
from domain.errors import LimitExceeded
from domain.events import AgentError, AgentStarted
from domain.limits import EngineLimits
from domain.ports import AuditLog, ChatModel, Clock, EventBridge
from domain.tools.catalog import ToolCatalog

log = logging.getLogger(__name__)

# An engine still registered this long after its run's timeout was leaked by its caller.
SWEEP_GRACE_S = 60.0

# Upper bounds (seconds) of the engine-creation-time histogram the factory keeps, so an exporter
# can publish a distribution without the domain knowing any metrics library.
CREATION_BUCKETS_S: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)


@dataclass(frozen=True, slots=True)
class FactoryMetrics:
    created: int
    active: int
    cleaned_up: int
    rejected: int
    timed_out: int
    swept: int
    creation_seconds_total: float
    creation_seconds_max: float
    # Creations per bucket of CREATION_BUCKETS_S (not cumulative); the last count is above the last bound.
    creation_bucket_counts: tuple[int, ...] = ()


class ExecutionEngineFactory:
    """Makes one engine per run, bound to the one bridge, within limits; cleans every one up."""

    def __init__(
        self,
        *,
        bridge: EventBridge,
        model: ChatModel,
        tools: ToolCatalog,
        clock: Clock,
        audit: AuditLog,
        limits: EngineLimits,
        gate: ApprovalGate,
    ) -> None:
        if bridge is None:
            raise TypeError("ExecutionEngineFactory needs the event bridge; engines never run without it")
        self._bridge = bridge
        self._model = model
        self._tools = tools
        self._clock = clock
        self._audit = audit
        self._limits = limits
        self._gate = gate
        self._engines: dict[str, UserExecutionEngine] = {}
        self._per_user: defaultdict[str, int] = defaultdict(int)
        self._closed = False
        self._created = 0
        self._cleaned_up = 0
        self._rejected = 0
        self._timed_out = 0
        self._swept = 0
        self._creation_total = 0.0
        self._creation_max = 0.0
        self._creation_buckets = [0] * (len(CREATION_BUCKETS_S) + 1)

    @property
    def limits(self) -> EngineLimits:
        return self._limits

    def _refuse(self, context: UserExecutionContext, reason: str) -> LimitExceeded:
        self._rejected += 1
        self._audit.record(AuditEntry(user_id=context.user_id, action=AuditAction.ENGINE_REJECTED,
                                      at=self._clock.now(), run_id=context.run_id, outcome=reason))
        return LimitExceeded(reason)

    async def create_for_user(self, context: UserExecutionContext,
                              resumption: Resumption | None = None) -> UserExecutionEngine:
        """The run's engine; with `resumption`, one that goes on from the run's checkpoint (a
        takeover), its events numbered after those stored."""
        started = time.perf_counter()
        if not isinstance(context, UserExecutionContext):
            raise TypeError("create_for_user takes a UserExecutionContext")
        # First, before the limits are checked: nothing is awaited between the check and the count.
        toolbox = await self._tools.for_user(context.user_id)
        if context.run_id in self._engines:
            raise ValueError(f"run {context.run_id} already has an engine")
        if (why := self._no_room(context.user_id)) is not None:
            raise self._refuse(context, why)
        engine = UserExecutionEngine(
            context=context,
            emitter=self.emitter_for(context, after_seq=resumption.last_seq if resumption else 0),
            model=self._model,
            toolbox=toolbox,
            limits=self._limits,
            gate=self._gate,
            resumption=resumption,
            _key=_FACTORY_KEY,
        )
        self._engines[context.run_id] = engine
        self._per_user[context.user_id] += 1
        self._created += 1
        elapsed = time.perf_counter() - started
        self._creation_total += elapsed
        self._creation_max = max(self._creation_max, elapsed)
        self._creation_buckets[bisect_left(CREATION_BUCKETS_S, elapsed)] += 1
        self._audit.record(AuditEntry(user_id=context.user_id, action=AuditAction.ENGINE_CREATED,
                                      at=self._clock.now(), run_id=context.run_id))
        return engine

    @asynccontextmanager
    async def user_execution_scope(
        self, context: UserExecutionContext, resumption: Resumption | None = None
    ) -> AsyncIterator[UserExecutionEngine]:
        """An engine for the length of the block, cleaned up however the block ends."""
        engine = await self.create_for_user(context, resumption)
        try:
            yield engine
        finally:
            await self.cleanup_engine(engine)

    async def cleanup_engine(self, engine: UserExecutionEngine) -> None:
        """Idempotent: the second call for the same engine does nothing."""
        run_id = engine._context.run_id
        if self._engines.get(run_id) is not engine:
            return
        try:
            await engine._close()
        finally:
            del self._engines[run_id]
            user_id = engine._context.user_id
            self._per_user[user_id] -= 1
            if self._per_user[user_id] <= 0:
                del self._per_user[user_id]
            self._cleaned_up += 1
            self._audit.record(AuditEntry(user_id=user_id, action=AuditAction.ENGINE_CLEANED_UP,
                                          at=self._clock.now(), run_id=run_id))

    def has_room(self, user_id: str) -> bool:
        """Whether an engine for this user would be made now (within the per-user and total limits)."""
        return self._no_room(user_id) is None

    def _no_room(self, user_id: str) -> str | None:
        """Why no engine can be made for this user now, in words for them; None: one can."""
        if self._closed:
            return "The server is shutting down and takes no new runs."
        if self._per_user.get(user_id, 0) >= self._limits.max_engines_per_user:
            return (f"You already have {self._limits.max_engines_per_user} runs going; "
                    "wait for one to end or cancel one.")
        if len(self._engines) >= self._limits.max_engines_total:
            return "The server is at its limit of runs; try again shortly."
        return None

    def engine_for(self, user_id: str, run_id: str) -> UserExecutionEngine | None:
        engine = self._engines.get(run_id)
        if engine is None or engine._context.user_id != user_id:
            return None
        return engine

    def emitter_for(self, context: UserExecutionContext, *, after_seq: int = 0) -> RunEventEmitter:
        """The one way to emit a run's events: numbered after `after_seq`, fenced by the context's
        lease epoch, through the one bridge."""
        return RunEventEmitter(context, self._bridge.publish, self._clock, after_seq=after_seq,
                               epoch=context.lease_epoch, delta_window_s=self._limits.delta_window_s)

    async def reject_run(self, context: UserExecutionContext, error: LimitExceeded,
                         resumption: Resumption | None = None) -> None:
        """A run refused before it had an engine still gets its first and terminal events (a run
        taken over: its terminal event, after those it has)."""
        emitter = self.emitter_for(context, after_seq=resumption.last_seq if resumption else 0)
        if emitter.last_seq == 0:
            await emitter.emit(AgentStarted(self._model.name))
        await emitter.emit(AgentError(code=error.code, message=error.message))

    async def sweep(self) -> int:
        """Clean up engines that outlived their run by far: a leak guard, not the normal path."""
        deadline = self._limits.run_timeout_s + SWEEP_GRACE_S
        now = time.monotonic()
        stale = [e for e in self._engines.values() if now - e.created_monotonic > deadline]
        for engine in stale:
            log.warning("sweeping engine of run %s, alive %.0f s", engine._context.run_id,
                        now - engine.created_monotonic)
            engine.cancel("timeout")
            await self.cleanup_engine(engine)
        self._swept += len(stale)
        return len(stale)

    def note_timeout(self) -> None:
        self._timed_out += 1

    async def shutdown(self) -> None:
        """Refuse new engines and clean up any left; callers drain their runs first."""
        self._closed = True
        for engine in list(self._engines.values()):
            engine.cancel("shutdown")
            await self.cleanup_engine(engine)

    def metrics(self) -> FactoryMetrics:
        return FactoryMetrics(
            created=self._created,
            active=len(self._engines),
            cleaned_up=self._cleaned_up,
            rejected=self._rejected,
            timed_out=self._timed_out,
            swept=self._swept,
            creation_seconds_total=self._creation_total,
            creation_seconds_max=self._creation_max,
            creation_bucket_counts=tuple(self._creation_buckets),
        )
