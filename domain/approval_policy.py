"""Approval policy as the agent loop meets it: which tools ask, whether a grant answers, when a
question lapses (the decisions themselves: domain/approvals.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from domain.context import UserExecutionContext
from domain.ports import ApprovalGrantRepository, Clock
from domain.tools.base import Policy

__all__ = ["APPROVAL_TIMEOUT", "DENIED", "ApprovalGate", "AwaitingApproval", "Policy", "Remember", "iso"]

# tool_completed.error of a call its user said no to (the model is told, and answers).
DENIED = "denied"
# agent_cancelled.reason of a run whose question went unanswered past approvals.timeout_s.
APPROVAL_TIMEOUT = "approval_timeout"


class Remember(StrEnum):
    THREAD = "thread"  # this tool, in this thread
    ALWAYS = "always"  # this tool, for this user


class AwaitingApproval(Exception):
    """The agent loop stopped to ask; the run's checkpoint holds the question."""


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class ApprovalGate:
    """What the agent loop asks before an `ask` tool runs: does a grant answer, and until when
    may a person take to answer."""

    def __init__(self, *, grants: ApprovalGrantRepository, clock: Clock, timeout_s: float) -> None:
        self._grants = grants
        self._clock = clock
        self._timeout = timedelta(seconds=timeout_s)

    async def granted(self, context: UserExecutionContext, tool: str) -> bool:
        return await self._grants.covers(context.user_id, tool, context.thread_id)

    def expires_at(self) -> str:
        return iso(self._clock.now() + self._timeout)
