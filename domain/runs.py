"""RunRegistry: everything one process knows about the runs it holds, and the one way to stop one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable

from domain.entities import Run, RunStatus
from domain.factory import ExecutionEngineFactory
from domain.lanes import ThreadLane

log = logging.getLogger(__name__)

# What `approval()` counts: questions asked, and how they were decided.
APPROVAL_OUTCOMES = ("asked", "approved", "denied", "timed_out")

# How long a drain waits for the runs it cancelled to write their end, after the grace period.
_CANCELLED_RUNS_GRACE_S = 5.0


class RunRegistry:
    """Lanes, tasks, pending counts, cancel requests, the drain flag and outcome counts of this process.

    Every stop of a run goes through `cancel`, whoever asks: a user (WebSocket, HTTP), a newer
    message that interrupts, another process (remote), the shutdown, or the run's timeout.
    """

    def __init__(self, *, factory: ExecutionEngineFactory) -> None:
        self._factory = factory
        self._lanes: dict[str, ThreadLane] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._runs: dict[str, Run] = {}
        self._pending: defaultdict[str, int] = defaultdict(int)
        self._cancel_requests: dict[str, str] = {}
        # Runs whose task ended without storing their end (the database was away): still ours
        # to end, by the housekeeper, as soon as the database answers.
        self._stranded: dict[str, Run] = {}
        self._accepting = True
        self._takeovers: dict[str, int] = {"resumed": 0, "interrupted": 0}
        self._approvals: dict[str, int] = dict.fromkeys(APPROVAL_OUTCOMES, 0)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._wakeups: dict[str, asyncio.Event] = {}  # set by a cancel: ends a run's pause
        self._outcomes = {status.value: 0 for status in
                          (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)}

    # -- what a submission asks ---------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """False once the process drains for shutdown: it takes no new runs."""
        return self._accepting

    def pending(self, user_id: str) -> int:
        """Runs of the user going or queued on this process."""
        return self._pending.get(user_id, 0)

    def lane(self, thread_id: str) -> ThreadLane:
        return self._lanes.setdefault(thread_id, ThreadLane())

    def thread_busy(self, thread_id: str) -> bool:
        lane = self._lanes.get(thread_id)
        return lane is not None and lane.busy

    def holds(self, run_id: str) -> bool:
        """The run is going or queued on this process."""
        return run_id in self._tasks

    @property
    def active(self) -> int:
        return len(self._tasks)

    def held(self) -> list[str]:
        """The runs a task of this process is running or queueing: the leases worth renewing."""
        return list(self._tasks)

    # -- runs left without an end ----------------------------------------------------------------

    def strand(self, run: Run) -> None:
        """The run's task ended but its end was not stored: it waits here to be ended."""
        self._stranded[run.id] = run

    def stranded(self) -> list[Run]:
        return list(self._stranded.values())

    def unstrand(self, run_id: str) -> None:
        self._stranded.pop(run_id, None)

    # -- starting and ending ------------------------------------------------------------------

    def launch(self, run: Run, execute: Callable[[Run], Awaitable[None]], *, beside: bool = False) -> bool:
        """Queue the run in its thread's lane and start its task; True if it runs at once.

        Synchronous, so a second message sent at once sees the thread busy. `execute` runs when
        the run's turn comes, or at once when it was withdrawn first (it still has to end).
        `beside`: a run that goes on (its approval decided, or taken over mid-run) runs beside the
        line at once: it started before anything queued there, which waits for it (ChatService).
        """
        lane = self.lane(run.thread_id)
        turn = lane.beside(run.id) if beside else lane.join(run.id)
        self._pending[run.user_id] += 1
        self._runs[run.id] = run
        self._tasks[run.id] = asyncio.create_task(self._tracked(run, lane, turn, execute),
                                                  name=f"run:{run.id}")
        return turn.done()

    async def _tracked(self, run: Run, lane: ThreadLane, turn: asyncio.Future[bool],
                       execute: Callable[[Run], Awaitable[None]]) -> None:
        my_turn = False
        try:
            my_turn = await lane.wait_turn(run.id, turn)
            await execute(run)
        finally:
            timer = self._timers.pop(run.id, None)
            if timer is not None:
                timer.cancel()
            if my_turn:
                lane.leave(run.id)
            if lane.idle and self._lanes.get(run.thread_id) is lane:
                del self._lanes[run.thread_id]
            self._pending[run.user_id] -= 1
            if self._pending[run.user_id] <= 0:
                del self._pending[run.user_id]
            self._cancel_requests.pop(run.id, None)
            self._wakeups.pop(run.id, None)
            self._tasks.pop(run.id, None)
            self._runs.pop(run.id, None)

    async def pause(self, run_id: str, seconds: float) -> None:
        """Sleep, but no longer than until the run is cancelled."""
        wakeup = self._wakeups.setdefault(run_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await wakeup.wait()

    def start_clock(self, run_id: str) -> None:
        """The run's timeout counts from now (its engine's start, not its wait in line)."""
        if run_id in self._tasks and run_id not in self._timers:
            self._timers[run_id] = asyncio.get_running_loop().call_later(
                self._factory.limits.run_timeout_s, self.cancel, run_id, "timeout")

    def ended(self, run: Run, status: RunStatus, detail: str | None) -> None:
        """Count the run's outcome (exported as runs by outcome) and log its end."""
        self._outcomes[status.value] = self._outcomes.get(status.value, 0) + 1
        log.info("run %s ended %s%s", run.id, status.value, f" ({detail})" if detail else "")

    def taken_over(self, outcome: str) -> None:
        """Count a run this process took over: `resumed` (it goes on here) or `interrupted`."""
        self._takeovers[outcome] = self._takeovers.get(outcome, 0) + 1

    def takeovers(self) -> dict[str, int]:
        return dict(self._takeovers)

    def approval(self, outcome: str) -> None:
        """Count an approval asked on this process, or decided here (APPROVAL_OUTCOMES)."""
        self._approvals[outcome] = self._approvals.get(outcome, 0) + 1

    def approvals(self) -> dict[str, int]:
        return dict(self._approvals)

    def outcomes(self) -> dict[str, int]:
        """Runs of this process that ended, by final status (completed, failed, cancelled)."""
        return dict(self._outcomes)

    async def wait(self, run_id: str) -> None:
        """Until the run's task ends, if this process holds it (the caller going away does not stop it)."""
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.shield(task)

    # -- stopping ------------------------------------------------------------------------------

    def cancel(self, run_id: str, reason: str) -> bool:
        """Stop a run of this process: its engine if it has one, else its place in the lane.

        The first reason wins. False if this process does not hold the run.
        """
        run = self._runs.get(run_id)
        if run is None:
            return False
        self._cancel_requests.setdefault(run_id, reason)
        if (wakeup := self._wakeups.get(run_id)) is not None:
            wakeup.set()
        engine = self._factory.engine_for(run.user_id, run_id)
        if engine is not None:
            engine.cancel(reason)
        else:
            lane = self._lanes.get(run.thread_id)
            if lane is not None:
                lane.withdraw(run_id)
        return True

    def cancel_requested(self, run_id: str) -> str | None:
        """The reason of a cancel that came before the run had its engine."""
        return self._cancel_requests.get(run_id)

    def interrupt(self, thread_id: str) -> None:
        """A new message that interrupts: every run of the thread, waiting or going, ends `interrupted`."""
        lane = self._lanes.get(thread_id)
        if lane is None:
            return
        for run_id in [*lane.waiting_ids(), *lane.going_ids()]:
            self.cancel(run_id, "interrupted")

    async def drain(self, grace_s: float) -> None:
        """Stop taking runs, let running ones finish within the grace period, cancel the rest."""
        self._accepting = False
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for run_id in list(self._tasks):
            self.cancel(run_id, "shutdown")
        remaining = [task for task in self._tasks.values() if not task.done()]
        if remaining:
            await asyncio.wait(remaining, timeout=_CANCELLED_RUNS_GRACE_S)
