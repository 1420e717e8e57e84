"""ChatService: the golden path's use case, from a user's message to a persisted answer."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from domain.context import UserExecutionContext
from domain.engine import RunOutcome, UserExecutionEngine
from domain.entities import AuditAction, AuditEntry, Message, Role, Run, RunStatus, Thread
from domain.errors import (
    InvalidMessage,
    LimitExceeded,
    MessageTooLarge,
    NotFound,
    ServerDraining,
    ThreadBusy,
)
from domain.factory import ExecutionEngineFactory
from domain.lanes import Multitask, ThreadLane
from domain.leases import LeasePolicy
from domain.llm import ChatMessage
from domain.ports import (
    AuditLog,
    Clock,
    IdGenerator,
    MessageRateLimit,
    MessageRepository,
    RunControl,
    RunRepository,
    ThreadRepository,
)
from domain.ratelimit import rate_limited
from domain.run_log import bind_run

log = logging.getLogger(__name__)

_TITLE_CHARS = 60

@dataclass(frozen=True, slots=True)
class ChatLimits:
    max_message_chars: int = 8000
    max_pending_runs_per_user: int = 16


@dataclass(frozen=True, slots=True)
class Submission:
    run: Run
    duplicate: bool = False


class ChatService:
    """Accepts messages, runs each in its own engine, one run at a time per thread."""

    def __init__(
        self,
        *,
        factory: ExecutionEngineFactory,
        threads: ThreadRepository,
        messages: MessageRepository,
        runs: RunRepository,
        audit: AuditLog,
        ids: IdGenerator,
        clock: Clock,
        limits: ChatLimits,
        lease: LeasePolicy,
        control: RunControl,
        rate_limiter: MessageRateLimit | None = None,
    ) -> None:
        self._rate_limiter = rate_limiter  # messages per minute per user; None: no limit
        self._lease = lease
        self._control = control
        self._factory = factory
        self._threads = threads
        self._messages = messages
        self._runs = runs
        self._audit = audit
        self._ids = ids
        self._clock = clock
        self._limits = limits
        self._lanes: dict[str, ThreadLane] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._task_runs: dict[str, Run] = {}
        self._pending: defaultdict[str, int] = defaultdict(int)
        self._cancel_requests: dict[str, str] = {}
        # (user, client_message_id) pairs being submitted now: a retry racing the original waits for it.
        self._submitting: dict[tuple[str, str], asyncio.Future[Submission]] = {}
        self._accepting = True
        self._outcomes = {status.value: 0 for status in
                          (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)}

    # -- submitting -------------------------------------------------------------------------

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
        """Persist the message and its run, and start it (or queue it behind the thread's run)."""
        message = self._check_text(text)
        if not self._accepting:
            raise ServerDraining("The server is shutting down; reconnect and send again.")
        if client_message_id is None:
            await self._check_rate(user_id)
            return await self._submit_new(user_id, message, request_id, thread_id, None, multitask)
        key = (user_id, client_message_id)
        if key in self._submitting:
            return Submission((await asyncio.shield(self._submitting[key])).run, duplicate=True)
        existing = await self._runs.get_by_client_message_id(user_id, client_message_id)
        if existing is not None:
            return Submission(existing, duplicate=True)
        if key in self._submitting:  # a retry that came in while this one read the database
            return Submission((await asyncio.shield(self._submitting[key])).run, duplicate=True)
        future: asyncio.Future[Submission] = asyncio.get_running_loop().create_future()
        self._submitting[key] = future
        try:
            # Only now, once it is known not to be a retry: a duplicate never counts against the rate.
            await self._check_rate(user_id)
            submission = await self._submit_new(
                user_id, message, request_id, thread_id, client_message_id, multitask
            )
            future.set_result(submission)
            return submission
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here so an unawaited failure is not reported twice
            raise
        finally:
            del self._submitting[key]

    async def _check_rate(self, user_id: str) -> None:
        """RateLimited (saying when to send again) if the user sent too many messages this minute."""
        if self._rate_limiter is not None:
            wait_s = await self._rate_limiter.take(user_id)
            if wait_s > 0:
                raise rate_limited(self._rate_limiter.per_minute, wait_s)

    async def _submit_new(
        self,
        user_id: str,
        text: str,
        request_id: str,
        thread_id: str | None,
        client_message_id: str | None,
        multitask: Multitask,
    ) -> Submission:
        pending = self._pending[user_id]
        if pending < self._limits.max_pending_runs_per_user:
            # Other processes' runs count too: the database is what they share.
            pending = max(pending, await self._runs.count_unfinished(user_id))
        if pending >= self._limits.max_pending_runs_per_user:
            raise LimitExceeded(
                f"You have {self._limits.max_pending_runs_per_user} runs going or queued; "
                "wait for one to end or cancel one."
            )
        now = self._clock.now()
        new_thread: Thread | None = None
        if thread_id is None:
            new_thread = Thread(id=self._ids.new_id("thr"), user_id=user_id, title=_title(text),
                                created_at=now, updated_at=now)
            thread = new_thread
        else:
            found = await self._threads.get(user_id, thread_id)
            if found is None:
                raise NotFound("There is no such thread.")
            thread = found
        lane = self._lanes.setdefault(thread.id, ThreadLane())
        if multitask is Multitask.REJECT and lane.busy:
            raise ThreadBusy("This thread already has a run going; wait for it or cancel it.")
        run = Run(id=self._ids.new_id("run"), user_id=user_id, thread_id=thread.id,
                  status=RunStatus.QUEUED, created_at=now, client_message_id=client_message_id,
                  owner=self._lease.owner,
                  lease_expires_at=now + timedelta(seconds=self._lease.ttl_s))
        message = Message(id=self._ids.new_id("msg"), thread_id=thread.id, user_id=user_id,
                          role=Role.USER, text=text, created_at=now, run_id=run.id)
        # One transaction; raises Conflict on a duplicate client_message_id (nothing stored then).
        await self._runs.add(run, message, new_thread=new_thread)
        if multitask is Multitask.INTERRUPT:
            self._interrupt(user_id, lane)
        self._pending[user_id] += 1
        turn = lane.join(run.id)
        self._task_runs[run.id] = run
        self._tasks[run.id] = asyncio.create_task(
            self._execute(run, request_id, lane, turn), name=f"run:{run.id}"
        )
        # Nothing awaited since create_task: the caller's ack is queued before the run's first event.
        status = RunStatus.RUNNING if turn.done() else RunStatus.QUEUED
        return Submission(replace(run, status=status))

    def _interrupt(self, user_id: str, lane: ThreadLane) -> None:
        for run_id in lane.waiting_ids():
            self._request_cancel(user_id, run_id, "interrupted", lane)
        if lane.active is not None:
            self._request_cancel(user_id, lane.active, "interrupted", lane)

    # -- running ------------------------------------------------------------------------------

    async def _execute(self, run: Run, request_id: str, lane: ThreadLane,
                       turn: asyncio.Future[bool]) -> None:
        bind_run(user_id=run.user_id, run_id=run.id, thread_id=run.thread_id, request_id=request_id)
        my_turn = False
        ended = False
        try:
            my_turn = await lane.wait_turn(run.id, turn)
            context = UserExecutionContext(user_id=run.user_id, thread_id=run.thread_id,
                                           run_id=run.id, request_id=request_id,
                                           created_at=self._clock.now())
            try:
                async with self._factory.user_execution_scope(context) as engine:
                    ended = await self._drive(engine, run)
            except LimitExceeded as exc:
                await self._runs.set_status(run.id, RunStatus.FAILED, finished_at=self._clock.now(),
                                            error=exc.message)
                await self._factory.reject_run(context, exc)
                self._ended(run, RunStatus.FAILED, exc.code)
                ended = True
        except Exception:
            log.exception("run %s could not be completed", run.id)
            if not ended:
                self._ended(run, RunStatus.FAILED, "internal_error")
        finally:
            if my_turn:
                lane.leave(run.id)
            if lane.idle and self._lanes.get(run.thread_id) is lane:
                del self._lanes[run.thread_id]
            self._pending[run.user_id] -= 1
            if self._pending[run.user_id] <= 0:
                del self._pending[run.user_id]
            self._cancel_requests.pop(run.id, None)
            self._tasks.pop(run.id, None)
            self._task_runs.pop(run.id, None)

    async def _drive(self, engine: UserExecutionEngine, run: Run) -> bool:
        """Run the engine, persist, send the terminal event; True once the run's end is counted."""
        reason = self._cancel_requests.get(run.id)
        if reason is not None:
            engine.cancel(reason)
        else:
            await self._runs.set_status(run.id, RunStatus.RUNNING)
        self._audit.record(AuditEntry(user_id=run.user_id, action=AuditAction.RUN_STARTED,
                                      at=self._clock.now(), run_id=run.id))
        log.info("run %s started", run.id)
        history = self._history(run, await self._messages.list_for_thread(run.user_id, run.thread_id))
        outcome = await engine.run(history)
        if outcome.cancel_reason == "timeout":
            self._factory.note_timeout()
        message_id = await self._persist(run, outcome)
        await engine.finish(outcome, message_id=message_id)
        self._audit.record(AuditEntry(user_id=run.user_id, action=AuditAction.RUN_ENDED,
                                      at=self._clock.now(), run_id=run.id,
                                      outcome=outcome.status.value,
                                      detail=outcome.error_code or outcome.cancel_reason))
        self._ended(run, outcome.status, outcome.error_code or outcome.cancel_reason)
        return True

    def _ended(self, run: Run, status: RunStatus, detail: str | None) -> None:
        """Count the run's outcome (exported as runs by outcome) and log its end."""
        self._outcomes[status.value] = self._outcomes.get(status.value, 0) + 1
        log.info("run %s ended %s%s", run.id, status.value, f" ({detail})" if detail else "")

    def _history(self, run: Run, messages: Sequence[Message]) -> list[ChatMessage]:
        """The thread as this run should see it: earlier turns, then its own message last.

        Messages of runs still queued or going are left out (a queued run's message was stored
        before the answer to the one ahead of it, and must not come before that answer).
        """
        own = [m for m in messages if m.run_id == run.id and m.role is Role.USER]
        earlier = [m for m in messages if m.run_id != run.id
                   and not (m.role is Role.USER and m.run_id in self._tasks)]
        return [ChatMessage(role="user" if m.role is Role.USER else "assistant", content=m.text)
                for m in [*earlier, *own]]

    async def _persist(self, run: Run, outcome: RunOutcome) -> str | None:
        """Store the answer and the run's end before the terminal event, so HTTP agrees with it."""
        now = self._clock.now()
        answer = None
        if outcome.status is RunStatus.COMPLETED:
            answer = Message(id=self._ids.new_id("msg"), thread_id=run.thread_id, user_id=run.user_id,
                             role=Role.ASSISTANT, text=outcome.text, created_at=now, run_id=run.id)
        await self._runs.finish(run.id, outcome.status, finished_at=now, answer=answer,
                                error=outcome.error_message or outcome.cancel_reason)
        return None if answer is None else answer.id

    # -- cancelling and waiting ----------------------------------------------------------------

    def _request_cancel(self, user_id: str, run_id: str, reason: str, lane: ThreadLane | None) -> None:
        self._cancel_requests.setdefault(run_id, reason)
        engine = self._factory.engine_for(user_id, run_id)
        if engine is not None:
            engine.cancel(reason)
        elif lane is not None:
            lane.withdraw(run_id)

    async def cancel(
        self, user_id: str, *, run_id: str | None = None, client_message_id: str | None = None,
        reason: str = "user",
    ) -> Run:
        """Idempotent: cancelling a run that already ended changes nothing."""
        if run_id is None and client_message_id is not None:
            key = (user_id, client_message_id)
            if key in self._submitting:
                run_id = (await asyncio.shield(self._submitting[key])).run.id
            else:
                found = await self._runs.get_by_client_message_id(user_id, client_message_id)
                run_id = found.id if found else None
        if run_id is None:
            raise NotFound("There is no such run.")
        run = await self._runs.get(user_id, run_id)
        if run is None:
            raise NotFound("There is no such run.")
        if run.id in self._tasks:
            self._request_cancel(user_id, run.id, reason, self._lanes.get(run.thread_id))
        elif not run.status.is_final and run.owner and run.owner != self._lease.owner:
            await self._control.request_cancel(run.owner, run.id, reason)
        return run

    def cancel_local(self, run_id: str, reason: str) -> bool:
        """A cancel that another process forwarded here, where the run runs."""
        run = self._task_runs.get(run_id)
        if run is None:
            return False
        self._request_cancel(run.user_id, run_id, reason, self._lanes.get(run.thread_id))
        return True

    async def wait(self, user_id: str, run_id: str) -> Run:
        """Wait for a run to end (the caller going away does not stop it)."""
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.shield(task)
        run = await self._runs.get(user_id, run_id)
        if run is None:
            raise NotFound("There is no such run.")
        return run

    def thread_busy(self, thread_id: str) -> bool:
        lane = self._lanes.get(thread_id)
        return lane is not None and lane.busy

    @property
    def active_runs(self) -> int:
        return len(self._tasks)

    def run_outcomes(self) -> dict[str, int]:
        """Runs of this process that ended, by final status (completed, failed, cancelled)."""
        return dict(self._outcomes)

    async def drain(self, grace_s: float) -> None:
        """Stop taking runs, let running ones finish within the grace period, cancel the rest."""
        self._accepting = False
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for run_id, task in list(self._tasks.items()):
            if not task.done():
                for lane in self._lanes.values():
                    lane.withdraw(run_id)
                run = self._task_runs.get(run_id)
                if run is not None:
                    self._request_cancel(run.user_id, run_id, "shutdown", None)
        remaining = [t for t in self._tasks.values() if not t.done()]
        if remaining:
            await asyncio.wait(remaining, timeout=5)


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _TITLE_CHARS else line[: _TITLE_CHARS - 1].rstrip() + "…"
