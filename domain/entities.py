"""Entities the domain persists through its repositories."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # for a person's approval of a tool call: a checkpoint, no engine, no lease
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    password_hash: str
    created_at: datetime
    token_version: int = 0  # bumped by logout and password change: earlier tokens stop working


@dataclass(frozen=True, slots=True)
class Thread:
    id: str
    user_id: str
    title: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    thread_id: str
    user_id: str
    role: Role
    text: str
    created_at: datetime
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class Run:
    id: str
    user_id: str
    thread_id: str
    status: RunStatus
    created_at: datetime
    client_message_id: str | None = None
    finished_at: datetime | None = None
    error: str | None = None
    # The process that runs it, and until when: a run whose lease lapses was orphaned by a crash.
    owner: str | None = None
    lease_expires_at: datetime | None = None
    # Raised by each takeover and each claim of a waiting run; only the holder of the current epoch
    # may write the run's events.
    lease_epoch: int = 0
    # Times the run was taken over from a process that stopped (runs.max_takeovers bounds it).
    takeovers: int = 0
    # While it waits for an approval: when the question lapses (approvals.timeout_s).
    wait_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Note:
    id: str
    user_id: str
    text: str
    created_at: datetime
    key: str | None = None  # the call that saved it: the same key saves nothing twice (per user)


@dataclass(frozen=True, slots=True)
class ApprovalGrant:
    """A person's standing yes to a tool: in one thread (`thread_id`), or everywhere (None)."""

    id: str
    user_id: str
    tool: str
    created_at: datetime
    thread_id: str | None = None


@dataclass(frozen=True, slots=True)
class McpServer:
    """A user's own MCP server: where it is, and the headers (their credentials) sent with each call.

    The headers are secrets: stored encrypted, never returned (only their names), never logged."""

    user_id: str
    name: str
    url: str
    created_at: datetime
    headers: Mapping[str, str] = field(default_factory=dict)
    approval: str = "auto"  # the policy of its tools: "auto" or "ask"


class AuditAction(StrEnum):
    USER_REGISTERED = "user.registered"
    ENGINE_CREATED = "engine.created"
    ENGINE_CLEANED_UP = "engine.cleaned_up"
    ENGINE_REJECTED = "engine.rejected"
    RUN_STARTED = "run.started"
    RUN_RESUMED = "run.resumed"
    RUN_WAITING = "run.waiting"
    APPROVAL_DECIDED = "approval.decided"
    MCP_SERVER_ADDED = "mcp.server_added"
    MCP_SERVER_REMOVED = "mcp.server_removed"
    RUN_ENDED = "run.ended"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Who did what, when, and how it ended."""

    user_id: str
    action: AuditAction
    at: datetime
    run_id: str | None = None
    outcome: str | None = None
    detail: str | None = None
