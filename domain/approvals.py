"""A person in the loop: tool calls that wait for approval, stored, not held.

A tool whose policy is `ask` (ToolBox.policy) is not run until its user says yes. The run sends
`approval_required`, its checkpoint names the call (`RunState.awaiting`), its status becomes
`waiting` in the same transaction, and its engine ends: a waiting run holds no engine, no engine
slot, no lease and no task anywhere. The decision (HTTP, a WebSocket frame or AG-UI `resume`)
claims the run with the next lease epoch and writes itself into the checkpoint in one
transaction, so exactly one decision wins; then the run goes on from its checkpoint through the
one factory, on the process that took the decision. A standing grant (`remember`) answers for
the person next time: in one thread, or always for that tool.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Protocol

from domain.approval_policy import APPROVAL_TIMEOUT, Remember, iso
from domain.checkpoints import CheckpointUnreadable, RunState, restore
from domain.context import context_of_run
from domain.entities import ApprovalGrant, AuditAction, AuditEntry, Run, RunStatus
from domain.errors import Conflict, LeaseLost, LimitExceeded, NotFound, ServerDraining
from domain.events import AgentCancelled, ApprovalDecided
from domain.factory import ExecutionEngineFactory
from domain.leases import LeasePolicy
from domain.ports import ApprovalGrantRepository, AuditLog, Clock, EventLog, IdGenerator, RunRepository
from domain.runs import RunRegistry

log = logging.getLogger(__name__)

class WaitingRuns:
    """Ends runs that wait for a person: cancelled by their user or a newer message, or unanswered
    past their time. Each is claimed first (one claimer wins), then ended with its terminal event."""

    def __init__(self, *, runs: RunRepository, events: EventLog, factory: ExecutionEngineFactory,
                 registry: RunRegistry, audit: AuditLog, clock: Clock, lease: LeasePolicy) -> None:
        self._runs = runs
        self._events = events
        self._factory = factory
        self._registry = registry
        self._audit = audit
        self._clock = clock
        self._lease = lease

    def _until(self) -> datetime:
        return self._clock.now() + timedelta(seconds=self._lease.ttl_s)

    async def end(self, run: Run, reason: str) -> bool:
        """End a waiting run with agent_cancelled; False if it was no longer waiting (decided)."""
        claimed = await self._runs.claim_waiting(run.id, owner=self._lease.owner, until=self._until())
        if claimed is None:
            return False
        await self._cancel(claimed, reason, timed_out=None)
        return True

    async def expire(self) -> int:
        """End the runs whose question lapsed: approval_decided (by timeout), agent_cancelled."""
        ended = 0
        for run in await self._runs.claim_expired_waiting(owner=self._lease.owner, now=self._clock.now(),
                                                          until=self._until()):
            stored = await self._events.checkpoint(run.id)
            awaiting = (stored or {}).get("awaiting") or {}
            await self._cancel(run, APPROVAL_TIMEOUT, timed_out=awaiting.get("tool_call_id"))
            ended += 1
        return ended

    async def _cancel(self, run: Run, reason: str, *, timed_out: str | None) -> None:
        context = context_of_run(run, request_id="approvals", created_at=self._clock.now())
        emitter = self._factory.emitter_for(context, after_seq=await self._events.last_seq(run.id))
        try:
            if timed_out is not None:
                await emitter.emit(ApprovalDecided(tool_call_id=timed_out, approved=False, by="timeout"))
            await emitter.emit(AgentCancelled(reason))
        except LeaseLost:
            return  # taken over meanwhile: whoever holds it now ends it
        self._audit.record(AuditEntry(user_id=run.user_id, action=AuditAction.RUN_ENDED,
                                      at=self._clock.now(), run_id=run.id, outcome="cancelled",
                                      detail=reason))
        self._registry.ended(run, RunStatus.CANCELLED, reason)
        if timed_out is not None:
            self._registry.approval("timed_out")


class Resumer(Protocol):
    def go_on(self, run: Run) -> None:
        """Go on with a run whose approval was decided (ChatService.go_on)."""


def _readable(stored: dict[str, Any] | None) -> RunState | None:
    if stored is None:
        return None
    try:
        return restore(stored)
    except CheckpointUnreadable:
        return None


class ApprovalService:
    """A person's decisions and standing grants; another user's run or grant is never found."""

    def __init__(self, *, runs: RunRepository, events: EventLog, grants: ApprovalGrantRepository,
                 resumer: Resumer, factory: ExecutionEngineFactory, registry: RunRegistry,
                 audit: AuditLog, clock: Clock, ids: IdGenerator, lease: LeasePolicy) -> None:
        self._runs = runs
        self._factory = factory
        self._registry = registry
        self._events = events
        self._grants = grants
        self._resumer = resumer
        self._audit = audit
        self._clock = clock
        self._ids = ids
        self._lease = lease

    async def pending(self, run: Run) -> list[dict[str, object]]:
        """The run's open question, as approval_required said it, with that event's seq (empty
        unless it waits)."""
        if run.status is not RunStatus.WAITING:
            return []
        stored = await self._events.checkpoint(run.id)
        awaiting = (stored or {}).get("awaiting")
        # The checkpoint was stored with the approval_required event: its seq is that event's.
        return [{**awaiting, "seq": stored["seq"]}] if stored and awaiting else []

    async def waiting(self, user_id: str, thread_id: str | None = None) -> list[dict[str, Any]]:
        """Every question the user has open, on any run and thread (or in one thread): what a client
        shows after a reload or on another device."""
        questions = []
        runs = await (self._runs.waiting_for_user(user_id) if thread_id is None
                      else self._runs.waiting_in_thread(user_id, thread_id))
        for run in runs:
            for asked in await self.pending(run):
                questions.append({"run_id": run.id, "thread_id": run.thread_id, **asked})
        return questions

    async def decide(self, user_id: str, run_id: str, tool_call_id: str, *, approve: bool,
                     reason: str | None = None, remember: Remember | None = None) -> Run:
        """Answer the run's question; the run goes on here. NotFound: no such run of the user, or
        it never asked about that call. Conflict: it was decided already, or the run ended."""
        run = await self._runs.get(user_id, run_id)
        if run is None:
            raise NotFound("There is no such run.")
        stored = await self._events.checkpoint(run.id)
        state = _readable(stored)
        asked = state is not None and (tool_call_id in state.decisions or (
            state.awaiting is not None and state.awaiting.get("tool_call_id") == tool_call_id))
        if state is None or not asked:
            raise NotFound("This run asked for no approval of that tool_call_id.")
        awaiting = state.awaiting
        if run.status is not RunStatus.WAITING or awaiting is None \
                or awaiting.get("tool_call_id") != tool_call_id:
            raise Conflict("That tool call was decided already, or its run has ended.")
        now = self._clock.now()
        if str(awaiting.get("expires_at", "")) <= iso(now):
            raise Conflict("That approval expired; the run ends as cancelled.")
        if not self._registry.accepting:
            raise ServerDraining("The server is shutting down; send your decision again in a moment.")
        if not self._factory.has_room(user_id):
            # Checked before the claim: refused here, the run still waits and nothing is lost.
            raise LimitExceeded("You have as many runs going as you may; decide again when one ends.")
        seq = int((stored or {}).get("seq", 0))
        state.decide(tool_call_id, approved=approve, by="user", reason=reason)
        grant = None
        if approve and remember is not None:
            grant = ApprovalGrant(id=self._ids.new_id("grant"), user_id=user_id, tool=str(awaiting["tool"]),
                                  created_at=now,
                                  thread_id=run.thread_id if remember is Remember.THREAD else None)
        claimed = await self._runs.claim_waiting(
            run.id, owner=self._lease.owner, until=now + timedelta(seconds=self._lease.ttl_s),
            checkpoint=state.checkpoint(seq), grant=grant, unexpired_at=now)
        if claimed is None:
            raise Conflict("That tool call was decided already, or its run has ended.")
        self._audit.record(AuditEntry(user_id=user_id, action=AuditAction.APPROVAL_DECIDED, at=now,
                                      run_id=run.id, outcome="approved" if approve else "denied",
                                      detail=f"{awaiting['tool']} {tool_call_id}"))
        log.info("run %s: %s %s by its user", run.id, tool_call_id, "approved" if approve else "denied")
        self._registry.approval("approved" if approve else "denied")
        self._resumer.go_on(claimed)
        return claimed

    async def grants(self, user_id: str) -> list[ApprovalGrant]:
        return list(await self._grants.list_for_user(user_id))

    async def revoke(self, user_id: str, grant_id: str) -> None:
        if not await self._grants.delete(user_id, grant_id):
            raise NotFound("There is no such grant.")
