"""ChatService: the golden path's use case, from a user's message to a persisted answer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from domain.approvals import WaitingRuns
from domain.checkpoints import Resumption
from domain.context import context_of_run
from domain.engine import UserExecutionEngine
from domain.entities import AuditAction, AuditEntry, Message, Role, Run, RunStatus, Thread
from domain.errors import (
    InvalidMessage,
    LeaseLost,
    LimitExceeded,
    MessageTooLarge,
    NotFound,
    ServerDraining,
    StorageUnavailable,
    ThreadBusy,
)
from domain.factory import ExecutionEngineFactory
from domain.idempotency import InFlight
from domain.lanes import Multitask
from domain.leases import LeasePolicy
from domain.llm import ChatMessage
from domain.ports import (
    AuditLog,
    Clock,
    EventLog,
    IdGenerator,
    MessageRateLimit,
    MessageRepository,
    RunControl,
    RunRepository,
    ThreadRepository,
)
from domain.ratelimit import rate_limited
from domain.run_log import bind_run
from domain.runs import RunRegistry

log = logging.getLogger(__name__)

_TITLE_CHARS = 60
# How often a run queued behind one that waits for an approval (or goes on elsewhere) looks again.
EARLIER_RUN_POLL_S = 0.25


@dataclass(frozen=True, slots=True)
class ChatLimits:
    max_message_chars: int
    max_pending_runs_per_user: int


@dataclass(frozen=True, slots=True)
class Submission:
    run: Run
    duplicate: bool = False


class ChatService:
    """Accepts messages and runs each in its own engine; the registry keeps what runs where."""

    def __init__(
        self,
        *,
        factory: ExecutionEngineFactory,
        registry: RunRegistry,
        threads: ThreadRepository,
        messages: MessageRepository,
        runs: RunRepository,
        events: EventLog,
        audit: AuditLog,
        ids: IdGenerator,
        clock: Clock,
        limits: ChatLimits,
        lease: LeasePolicy,
        control: RunControl,
        waiting: WaitingRuns,
        rate_limiter: MessageRateLimit | None = None,
    ) -> None:
        self._factory = factory
        self._registry = registry
        self._threads = threads
        self._messages = messages
        self._runs = runs
        self._events = events
        self._audit = audit
        self._ids = ids
        self._clock = clock
        self._limits = limits
        self._lease = lease
        self._control = control
        self._waiting = waiting
        self._rate_limiter = rate_limiter  # messages per minute per user; None: no limit
        self._submitting: InFlight[tuple[str, str], Submission] = InFlight()

    # -- submitting -------------------------------------------------------------------------

    async def submit(
        self,
        *,
        user_id: str,
        text: object,
        request_id: str,
        thread_id: str | None = None,
        client_message_id: str | None = None,
        multitask: Multitask = Multitask.ENQUEUE,
    ) -> Submission:
        """Persist the message and its run, and start it (or queue it behind the thread's run).

        A client_message_id seen before (or being submitted right now) gets that run back.
        """
        message = self._check_text(text)
        if not self._registry.accepting:
            raise ServerDraining("The server is shutting down; reconnect and send again.")
        if client_message_id is None:
            await self._check_rate(user_id)
            return await self._submit_new(user_id, message, request_id, thread_id, None, multitask)
        key = (user_id, client_message_id)
        if (racing := self._submitting.get(key)) is not None:
            return Submission((await racing).run, duplicate=True)
        existing = await self._runs.get_by_client_message_id(user_id, client_message_id)
        if existing is not None:
            return Submission(existing, duplicate=True)
        if (racing := self._submitting.get(key)) is not None:  # came in while this one read
            return Submission((await racing).run, duplicate=True)
        async with self._submitting.hold(key) as done:
            # Only now, once it is known not to be a retry: a duplicate never counts against the rate.
            await self._check_rate(user_id)
            return done(await self._submit_new(user_id, message, request_id, thread_id,
                                               client_message_id, multitask))

    def _check_text(self, text: object) -> str:
        if not isinstance(text, str):
            raise InvalidMessage("'message' must be a string.")
        if not text.strip():
            raise InvalidMessage("The message is empty; type something to send.")
        if len(text) > self._limits.max_message_chars:
            raise MessageTooLarge(
                f"The message has {len(text)} characters; the limit is {self._limits.max_message_chars}."
            )
        return text

    async def _check_rate(self, user_id: str) -> None:
        """RateLimited (saying when to send again) if the user sent too many messages this minute."""
        if self._rate_limiter is not None:
            wait_s = await self._rate_limiter.take(user_id)
            if wait_s > 0:
                raise rate_limited(self._rate_limiter.per_minute, wait_s)

    async def _submit_new(self, user_id: str, text: str, request_id: str, thread_id: str | None,
                          client_message_id: str | None, multitask: Multitask) -> Submission:
        limit = self._limits.max_pending_runs_per_user
        pending = self._registry.pending(user_id)
        if pending < limit:
            # Other processes' runs count too: the database is what they share.
            pending = max(pending, await self._runs.count_unfinished(user_id))
        if pending >= limit:
            raise LimitExceeded(f"You have {limit} runs going or queued; wait for one to end or cancel one.")
        now = self._clock.now()
        new_thread: Thread | None = None
        if thread_id is None:
            new_thread = Thread(id=self._ids.new_id("thr"), user_id=user_id, title=_title(text),
                                created_at=now, updated_at=now)
            thread = new_thread
        elif (thread := await self._threads.get(user_id, thread_id)) is None:
            raise NotFound("There is no such thread.")
        # A run waiting for its user's approval is the thread's run going, on whichever process.
        waiting = [] if new_thread is not None else await self._runs.waiting_in_thread(user_id, thread.id)
        if multitask is Multitask.REJECT and (waiting or self._registry.thread_busy(thread.id)):
            raise ThreadBusy("This thread already has a run going (or waiting for your approval); "
                             "wait for it or cancel it.")
        run = Run(id=self._ids.new_id("run"), user_id=user_id, thread_id=thread.id,
                  status=RunStatus.QUEUED, created_at=now, client_message_id=client_message_id,
                  owner=self._lease.owner, lease_expires_at=now + timedelta(seconds=self._lease.ttl_s))
        message = Message(id=self._ids.new_id("msg"), thread_id=thread.id, user_id=user_id,
                          role=Role.USER, text=text, created_at=now, run_id=run.id)
        # One transaction; raises Conflict on a duplicate client_message_id (nothing stored then).
        await self._runs.add(run, message, new_thread=new_thread)
        if multitask is Multitask.INTERRUPT:
            self._registry.interrupt(thread.id)
            for stopped in waiting:
                await self._waiting.end(stopped, "interrupted")
            waiting = []
        # Behind a run that waits, or one going here: before its engine it waits for those to end.
        # Asked now, with nothing awaited before the launch, so no run can slip in between.
        behind = bool(waiting) or self._registry.thread_busy(thread.id)
        running = self._registry.launch(run, lambda r: self._execute(r, request_id, behind=behind))
        # Nothing awaited since launch: the caller's ack is queued before the run's first event.
        return Submission(replace(run, status=RunStatus.RUNNING if running else RunStatus.QUEUED))

    # -- running ------------------------------------------------------------------------------

    def resume(self, run: Run) -> None:
        """Go on with a run taken over from a process that stopped (the Housekeeper took it, with
        the next lease epoch): a started run from its last checkpoint, beside its thread's line (it
        came first); a queued one from its start, in line, after the runs made before it."""
        started = run.status is RunStatus.RUNNING
        self._registry.launch(run, lambda r: self._execute(r, "takeover", resumed="takeover",
                                                           behind=not started), beside=started)

    def go_on(self, run: Run) -> None:
        """Go on with a run whose approval was decided here (ApprovalService claimed it)."""
        self._registry.launch(run, lambda r: self._execute(r, "approval", resumed="decided"), beside=True)

    async def _resumption(self, run: Run, resumed: str | None) -> Resumption | None:
        """What a run that goes on starts from; None for a run that had not started (it starts)."""
        if resumed is None or run.status is not RunStatus.RUNNING:
            return None
        return Resumption(state=await self._events.checkpoint(run.id),
                          last_seq=await self._events.last_seq(run.id), attempt=run.takeovers,
                          decided=resumed == "decided")

    async def _after_earlier(self, run: Run) -> None:
        """Each thread answers in order: while a run of the thread made before this one has not
        ended (it waits for an approval, or goes on beside the line or on another process), wait.
        A cancel stops the wait (the run then ends cancelled)."""
        while self._registry.cancel_requested(run.id) is None:
            if await self._runs.unfinished_before(run) is None:
                return
            await self._registry.pause(run.id, EARLIER_RUN_POLL_S)

    async def _execute(self, run: Run, request_id: str, *, resumed: str | None = None,
                       behind: bool = False) -> None:
        """The run's task, once its turn came (or it was withdrawn): engine, answer, terminal event."""
        bind_run(user_id=run.user_id, run_id=run.id, thread_id=run.thread_id, request_id=request_id)
        context = context_of_run(run, request_id=request_id, created_at=self._clock.now())
        try:
            resumption = None
            try:
                if behind:
                    await self._after_earlier(run)
                resumption = await self._resumption(run, resumed)
                async with self._factory.user_execution_scope(context, resumption) as engine:
                    await self._drive(engine, run, resumption)
            except LimitExceeded as exc:
                await self._factory.reject_run(context, exc, resumption)
                self._registry.ended(run, RunStatus.FAILED, exc.code)
        except LeaseLost:
            log.warning("run %s was taken over by another process; it stopped here", run.id)
        except StorageUnavailable:
            log.warning("run %s could not be stored while the database was away; it ends as "
                        "interrupted once the database answers", run.id)
            self._registry.strand(run)
        except Exception:
            log.exception("run %s could not be completed", run.id)
            self._registry.strand(run)

    async def _drive(self, engine: UserExecutionEngine, run: Run, resumption: Resumption | None) -> None:
        """Run the engine and send its terminal event, which stores the run's end with it."""
        self._registry.start_clock(run.id)
        reason = self._registry.cancel_requested(run.id)
        if reason is not None:
            engine.cancel(reason)
        else:
            await self._runs.mark_running(run.id, run.lease_epoch)
        if resumption is None:
            self._audit.record(AuditEntry(user_id=run.user_id, action=AuditAction.RUN_STARTED,
                                          at=self._clock.now(), run_id=run.id))
            log.info("run %s started", run.id)
        elif resumption.decided:
            log.info("run %s goes on after its approval was decided", run.id)
        else:
            detail = f"attempt {resumption.attempt} by {self._lease.owner} from seq {resumption.from_seq}"
            self._audit.record(AuditEntry(user_id=run.user_id, action=AuditAction.RUN_RESUMED,
                                          at=self._clock.now(), run_id=run.id, detail=detail))
            log.warning("run %s resumed here: %s", run.id, detail)
        history = [] if resumption is not None and resumption.state is not None else self._history(
            run, await self._messages.list_for_thread(run.user_id, run.thread_id))
        outcome = await engine.run(history)
        if outcome.status is RunStatus.WAITING:
            self._audit.record(AuditEntry(user_id=run.user_id, action=AuditAction.RUN_WAITING,
                                          at=self._clock.now(), run_id=run.id))
            log.info("run %s waits for its user's approval; it holds no engine meanwhile", run.id)
            self._registry.approval("asked")
            return
        if outcome.cancel_reason == "timeout":
            self._factory.note_timeout()
        answer_id = self._ids.new_id("msg") if outcome.status is RunStatus.COMPLETED else None
        await engine.finish(outcome, message_id=answer_id)
        detail = outcome.error_code or outcome.cancel_reason
        self._audit.record(AuditEntry(user_id=run.user_id, action=AuditAction.RUN_ENDED,
                                      at=self._clock.now(), run_id=run.id,
                                      outcome=outcome.status.value, detail=detail))
        self._registry.ended(run, outcome.status, detail)

    def _history(self, run: Run, messages: Sequence[Message]) -> list[ChatMessage]:
        """The thread as this run should see it: earlier turns, then its own message last.

        Messages of runs still queued or going are left out (a queued run's message was stored
        before the answer to the one ahead of it, and must not come before that answer).
        """
        own = [m for m in messages if m.run_id == run.id and m.role is Role.USER]
        earlier = [m for m in messages if m.run_id != run.id
                   and not (m.role is Role.USER and m.run_id is not None
                            and self._registry.holds(m.run_id))]
        return [ChatMessage(role="user" if m.role is Role.USER else "assistant", content=m.text)
                for m in [*earlier, *own]]

    # -- cancelling and waiting ----------------------------------------------------------------

    async def cancel(self, user_id: str, *, run_id: str | None = None,
                     client_message_id: str | None = None, reason: str = "user") -> Run:
        """Idempotent: cancelling a run that already ended changes nothing."""
        if run_id is None and client_message_id is not None:
            if (racing := self._submitting.get((user_id, client_message_id))) is not None:
                run_id = (await racing).run.id
            else:
                found = await self._runs.get_by_client_message_id(user_id, client_message_id)
                run_id = found.id if found else None
        run = None if run_id is None else await self._runs.get(user_id, run_id)
        if run is None:
            raise NotFound("There is no such run.")
        if run.status is RunStatus.WAITING:
            if await self._waiting.end(run, reason):
                return run
            run = await self._runs.get(user_id, run.id) or run  # decided meanwhile: it goes on somewhere
        if not self._registry.cancel(run.id, reason) and not run.status.is_final \
                and run.owner and run.owner != self._lease.owner:
            await self._control.request_cancel(run.owner, run.id, reason)
        return run

    async def wait(self, user_id: str, run_id: str) -> Run:
        """Wait for a run to end (the caller going away does not stop it)."""
        await self._registry.wait(run_id)
        run = await self._runs.get(user_id, run_id)
        if run is None:
            raise NotFound("There is no such run.")
        return run


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _TITLE_CHARS else line[: _TITLE_CHARS - 1].rstrip() + "…"
