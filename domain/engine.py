"""UserExecutionEngine: executes one run for one context; never shared, never reused."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from domain.agent import run_agent
from domain.approval_policy import ApprovalGate, AwaitingApproval
from domain.checkpoints import CheckpointUnreadable, Resumption, RunState, restore
from domain.context import UserExecutionContext
from domain.emitter import RunEventEmitter
from domain.entities import RunStatus
from domain.errors import EngineClosed, LeaseLost, ModelError, StorageUnavailable
from domain.events import AgentCancelled, AgentCompleted, AgentError, AgentStarted, RunResumed
from domain.leases import INTERRUPTED, INTERRUPTED_MESSAGE
from domain.limits import EngineLimits
from domain.llm import ChatMessage, Usage
from domain.ports import ChatModel
from domain.tools import ToolBox

log = logging.getLogger(__name__)

# Only ExecutionEngineFactory holds this key, so an engine cannot be built anywhere else.
_FACTORY_KEY = object()


@dataclass(frozen=True, slots=True)
class RunOutcome:
    status: RunStatus
    text: str = ""
    usage: Usage = field(default_factory=Usage)
    error_code: str | None = None
    error_message: str | None = None
    cancel_reason: str | None = None


class UserExecutionEngine:
    """Holds one run's state and its context-bound emitter; any use after cleanup raises."""

    def __init__(
        self,
        *,
        context: UserExecutionContext,
        emitter: RunEventEmitter,
        model: ChatModel,
        toolbox: ToolBox,
        limits: EngineLimits,
        gate: ApprovalGate,
        resumption: Resumption | None = None,
        _key: object = None,
    ) -> None:
        if _key is not _FACTORY_KEY:
            raise TypeError("UserExecutionEngine is made only by ExecutionEngineFactory.create_for_user")
        if emitter.context is not context:
            raise ValueError("the emitter must be bound to this engine's context")
        self._context = context
        self._emitter = emitter
        # Another process took the run over: stop at once, its writes would be refused anyway.
        emitter.on_lease_lost = lambda: self.cancel("lease_lost")
        self._model = model
        self._toolbox = toolbox
        self._limits = limits
        self._gate = gate
        self._resumption = resumption
        self._state = RunState()
        self._task: asyncio.Task[str] | None = None
        self._cancel_reason: str | None = None
        self._started = False
        self._waiting = False  # it stopped to ask its user: it ends without a terminal event
        self._closed = False
        self.created_monotonic = time.monotonic()

    @property
    def context(self) -> UserExecutionContext:
        self._ensure_open()
        return self._context

    @property
    def state(self) -> RunState:
        self._ensure_open()
        return self._state

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def terminal_sent(self) -> bool:
        return self._emitter.terminal_sent

    def _ensure_open(self) -> None:
        if self._closed:
            raise EngineClosed(f"engine of run {self._context.run_id} was cleaned up")

    async def run(self, history: Sequence[ChatMessage]) -> RunOutcome:
        """Run the agent once; returns how it ended without sending the terminal event."""
        self._ensure_open()
        if self._started:
            raise RuntimeError("an engine runs exactly once")
        self._started = True
        started = time.perf_counter()
        try:
            await self._begin(history)
        except CheckpointUnreadable as exc:
            log.error("run %s cannot go on: %s; it ends as interrupted", self._context.run_id, exc)
            return self._ended(RunStatus.FAILED, started, code=INTERRUPTED, message=INTERRUPTED_MESSAGE)
        if self._cancel_reason is not None:
            return RunOutcome(RunStatus.CANCELLED, cancel_reason=self._cancel_reason)
        self._task = asyncio.create_task(
            run_agent(
                context=self._context,
                model=self._model,
                toolbox=self._toolbox,
                emitter=self._emitter,
                state=self._state,
                limits=self._limits,
                gate=self._gate,
            ),
            name=f"agent:{self._context.run_id}",
        )
        try:
            # No timeout here: the run's timeout is a cancel like any other (RunRegistry.cancel).
            text = await self._task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._cancel_reason is None or (current is not None and current.cancelling()):
                raise
            return self._ended(RunStatus.CANCELLED, started, cancel_reason=self._cancel_reason)
        except ModelError as exc:
            return self._ended(RunStatus.FAILED, started, code=exc.code, message=exc.message)
        except AwaitingApproval:
            self._waiting = True  # its question is stored: the run waits, holding nothing
            return self._ended(RunStatus.WAITING, started)
        except (StorageUnavailable, LeaseLost):
            raise  # not the agent's failure: the run cannot write its events (see ChatService)
        except Exception:
            log.exception("run %s failed", self._context.run_id)
            return self._ended(RunStatus.FAILED, started, code="internal_error",
                               message="The agent failed unexpectedly; the error was logged.")
        return self._ended(RunStatus.COMPLETED, started, text=text)

    async def _begin(self, history: Sequence[ChatMessage]) -> None:
        """A new run starts with the thread's history; a run taken over, from its checkpoint (or
        from the start if it had none), saying so with run_resumed; a run whose approval was
        decided, from its checkpoint, saying nothing (its loop announces the decision)."""
        resumption = self._resumption
        if resumption is None:
            await self._emitter.emit(AgentStarted(self._model.name))
            self._state.conversation.extend(history)
            return
        if resumption.state is not None:
            self._state = restore(resumption.state)
        else:
            self._state.conversation.extend(history)
        if resumption.decided:
            return
        await self._emitter.emit(RunResumed(attempt=resumption.attempt, from_seq=resumption.from_seq,
                                            text="".join(self._state.answer)))

    def _ended(self, status: RunStatus, started: float, *, text: str = "", code: str | None = None,
               message: str | None = None, cancel_reason: str | None = None) -> RunOutcome:
        self._state.usage.duration_ms = int((time.perf_counter() - started) * 1000)
        if status is RunStatus.CANCELLED and not text:
            text = "".join(self._state.answer)
        return RunOutcome(status, text=text, usage=self._state.usage, error_code=code,
                          error_message=message, cancel_reason=cancel_reason)

    def cancel(self, reason: str) -> None:
        """Stop the run as soon as possible; it ends with agent_cancelled and this reason."""
        if self._closed or self._cancel_reason is not None:
            return
        self._cancel_reason = reason
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def finish(self, outcome: RunOutcome, *, message_id: str | None = None) -> None:
        """Send the run's one terminal event."""
        self._ensure_open()
        if outcome.status is RunStatus.COMPLETED:
            await self._emitter.emit(
                AgentCompleted(message_id=message_id, text=outcome.text, usage=outcome.usage.to_dict())
            )
        elif outcome.status is RunStatus.CANCELLED:
            await self._emitter.emit(AgentCancelled(outcome.cancel_reason))
        else:
            await self._emitter.emit(AgentError(code=outcome.error_code, message=outcome.error_message))

    async def _close(self) -> None:
        """Called by the factory only: stop whatever still runs and refuse any further use."""
        if self._closed:
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()
            # The run is over; whatever it raised was already reported.
            with contextlib.suppress(BaseException):
                await self._task
        if self._started and not self._emitter.terminal_sent and not self._waiting:
            try:
                await self._emitter.emit(
                    AgentError(code="internal_error", message="The run ended without an answer.")
                )
            except (StorageUnavailable, LeaseLost):
                pass  # the run is ended by whoever holds it once the database answers
            except Exception:
                log.exception("could not send the terminal event of run %s", self._context.run_id)
        self._closed = True
        self._state = RunState()
