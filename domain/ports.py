"""Ports: what the domain needs from the outside world, as typing.Protocols."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from domain.entities import ApprovalGrant, AuditEntry, McpServer, Message, Note, Run, Thread, User
    from domain.events import AgentEvent
    from domain.llm import ModelChunk, ModelRequest
    from domain.tools.base import ExternalTools


class Clock(Protocol):
    def now(self) -> datetime: ...


class IdGenerator(Protocol):
    def new_id(self, prefix: str) -> str: ...


class ChatModel(Protocol):
    """A chat model that streams; `builtin` and `openai` both speak exactly this."""

    name: str

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]: ...


class EventBridge(Protocol):
    """The one bridge from runs to subscribers: stores each event, then fans it out to its user."""

    def publish(self, event: AgentEvent) -> Awaitable[AgentEvent]:
        """Queue the event; resolves to it, with its cursor, once stored and fanned out."""
        ...


class EventLog(Protocol):
    """Durable, ordered store of every event; gives each stored event its cursor."""

    async def append(self, event: AgentEvent) -> AgentEvent: ...

    def submit(self, event: AgentEvent) -> Awaitable[AgentEvent]:
        """Queue the event; resolves to it with its cursor once stored. Stored in queue order.

        Fenced: an event whose `epoch` is not its run's current lease epoch, or of a run that
        ended, is refused (LeaseLost). A terminal event stores its run's end in the same
        transaction: the final status and, for agent_completed, the answer message.
        """
        ...

    def listen(self, listener: Callable[[list[AgentEvent]], Awaitable[None]] | None) -> None:
        """`listener` gets the stored events, in order, before their submitters hear of them."""
        ...

    async def read_run(self, user_id: str, run_id: str, after_seq: int = 0,
                       limit: int | None = None) -> list[AgentEvent]:
        """The run's events after `after_seq`, in seq order; the first `limit` of them if given."""
        ...

    async def read_runs(self, user_id: str, run_ids: Collection[str]) -> list[AgentEvent]:
        """Every event of these runs of the user, by run, in seq order (a thread's timeline page)."""
        ...

    async def read_user(self, user_id: str, after_cursor: str | None,
                        limit: int | None = None) -> list[AgentEvent]:
        """Events after the cursor, in cursor order (the first `limit` if given); CursorExpired
        if later ones were pruned."""
        ...

    async def last_seq(self, run_id: str) -> int: ...

    async def checkpoint(self, run_id: str) -> dict[str, Any] | None:
        """The run's latest checkpoint, stored with the event it follows; None: it has none."""
        ...

    async def prune(self, older_than: datetime) -> int:
        """Delete events older than the retention period; returns how many."""
        ...


class UserRepository(Protocol):
    async def add(self, user: User) -> None: ...

    async def get(self, user_id: str) -> User | None: ...

    async def get_by_username(self, username: str) -> User | None: ...

    async def list(self) -> Sequence[User]: ...

    async def bump_token_version(self, user_id: str) -> int:
        """Revoke every token issued so far; returns the new version."""
        ...

    async def set_password(self, user_id: str, password_hash: str) -> int:
        """Store a new hash and revoke every earlier token; returns the new token version."""
        ...


class ThreadRepository(Protocol):
    """Threads are written with their runs (RunRepository.add, finish); here they are read, found,
    renamed, forked and deleted."""

    async def get(self, user_id: str, thread_id: str) -> Thread | None: ...

    async def page(self, user_id: str, *, query: str | None = None,
                   after: tuple[datetime, str] | None = None, limit: int = 100) -> Sequence[Thread]:
        """The user's threads, most recently updated first, after (updated_at, id) `after`; with
        `query`, those whose title or any message holds it (case-insensitive)."""
        ...

    async def rename(self, user_id: str, thread_id: str, title: str) -> Thread | None: ...

    async def add_fork(self, thread: Thread, messages: Sequence[Message]) -> None:
        """A new thread with copies of another's messages, in one transaction."""
        ...

    async def delete(self, user_id: str, thread_id: str) -> bool: ...


class MessageRepository(Protocol):
    """Messages are written with their runs (RunRepository.add, finish); here they are read."""

    async def list_for_thread(self, user_id: str, thread_id: str) -> Sequence[Message]: ...

    async def page(self, user_id: str, thread_id: str, *, before: tuple[datetime, str] | None = None,
                   limit: int = 50) -> Sequence[Message]:
        """The thread's last `limit` messages before (created_at, id) `before`, newest first."""
        ...


class RunRepository(Protocol):
    async def add(self, run: Run, message: Message | None = None, *, new_thread: Thread | None = None
                  ) -> None:
        """The run, the message that asked for it and the thread it opened, in one transaction.

        The thread's updated_at becomes the message's time. Conflict: the user has a run for
        that client_message_id already (then nothing is stored).
        """
        ...

    async def get(self, user_id: str, run_id: str) -> Run | None: ...

    async def get_many(self, user_id: str, run_ids: Collection[str]) -> Sequence[Run]: ...

    async def get_by_client_message_id(self, user_id: str, client_message_id: str) -> Run | None: ...

    async def mark_running(self, run_id: str, epoch: int) -> None:
        """Queued becomes running, if the run is still held at `epoch`.

        A run's end is not written here: its terminal event stores it (EventLog), so neither
        exists without the other.
        """
        ...

    async def count_unfinished(self, user_id: str) -> int:
        """Runs of the user queued or running, on any process (a waiting run is not counted)."""
        ...

    async def waiting_in_thread(self, user_id: str, thread_id: str) -> Sequence[Run]:
        """The thread's runs waiting for an approval."""
        ...

    async def waiting_for_user(self, user_id: str, limit: int = 100) -> Sequence[Run]:
        """The user's runs waiting for an approval, oldest first."""
        ...

    async def unfinished_before(self, run: Run) -> Run | None:
        """A run of `run`'s thread made before it (created_at, then id) that has not ended."""
        ...

    async def claim_waiting(self, run_id: str, *, owner: str, until: datetime,
                            checkpoint: dict[str, Any] | None = None, grant: ApprovalGrant | None = None,
                            unexpired_at: datetime | None = None) -> Run | None:
        """Atomically take a waiting run for `owner` (running, a lease to `until`, the next epoch),
        with, in the same transaction, its new checkpoint state and a grant to store; None if it
        was not waiting (or its question lapsed before `unexpired_at`). One claimer wins."""
        ...

    async def claim_expired_waiting(self, *, owner: str, now: datetime, until: datetime,
                                    limit: int = 100) -> Sequence[Run]:
        """Claim (as claim_waiting) the waiting runs whose question lapsed before `now`."""
        ...

    async def renew_leases(self, owner: str, until: datetime, run_ids: Collection[str]) -> int:
        """Extend the leases `owner` holds of these unfinished runs (those it runs); how many."""
        ...

    async def take_over(self, *, new_owner: str, until: datetime, lapsed_before: datetime | None = None,
                        previous_owner: str | None = None, limit: int = 100) -> Sequence[Run]:
        """Atomically take unfinished runs whose lease lapsed before `lapsed_before` (or that
        `previous_owner` held) for `new_owner`, with the next lease epoch; returns them.

        Two processes sweeping at once never take the same run twice.
        """
        ...


class MessageRateLimit(Protocol):
    """Chat messages per minute per user: in one process, or shared by all (Redis)."""

    @property
    def per_minute(self) -> int: ...

    async def take(self, key: str) -> float:
        """Take one token: 0.0 if there was one, else the seconds until there will be (none taken)."""
        ...


class RunControl(Protocol):
    """Reaches the process that runs a run: how a cancel sent to one process stops it on another."""

    async def request_cancel(self, owner: str, run_id: str, reason: str) -> None: ...


class NoteRepository(Protocol):
    async def add(self, note: Note) -> Note:
        """Store it and return it; a note with the `key` of one the user has is not stored again,
        and that one is returned."""
        ...

    async def search(self, user_id: str, query: str, limit: int = 5) -> Sequence[Note]: ...

    async def delete_matching(self, user_id: str, query: str) -> Sequence[Note]:
        """Delete the user's notes that match the query (as search does, all of them); returns them."""
        ...


class ApprovalGrantRepository(Protocol):
    """A user's standing approvals; written with a decision (RunRepository.claim_waiting)."""

    async def list_for_user(self, user_id: str) -> Sequence[ApprovalGrant]: ...

    async def delete(self, user_id: str, grant_id: str) -> bool: ...

    async def covers(self, user_id: str, tool: str, thread_id: str) -> bool:
        """A grant of the user for the tool, in this thread or always."""
        ...


class ToolSource(Protocol):
    """Tools from outside the process (MCP servers), as one user may use them."""

    async def tools_for(self, user_id: str) -> ExternalTools:
        """The user's tools from this source, each named `{server}__{tool}`. A server that cannot
        be reached (or listed) is named in `unreachable`: a call of its tools fails with that
        reason as the tool's error, never the run."""
        ...

    def forget(self, user_id: str) -> None:
        """Drop what is cached for the user: their servers changed."""
        ...

    async def aclose(self) -> None:
        """Stop what the source holds (the processes of stdio servers); at the server's stop."""
        ...


class McpServerRepository(Protocol):
    """Each user's own MCP servers; their headers are encrypted at rest by the adapter."""

    async def add(self, server: McpServer) -> None:
        """Conflict if the user has a server of that name already."""
        ...

    async def list_for_user(self, user_id: str) -> Sequence[McpServer]: ...

    async def delete(self, user_id: str, name: str) -> bool: ...


class UrlGuard(Protocol):
    """Whether a URL a user gave may be reached (checked again by the adapter at every connection)."""

    async def check(self, url: str) -> None:
        """ValidationFailed naming why not: not http(s), or an address that is loopback, private or
        link-local (unless the settings allow private networks), or a name that resolves to one."""
        ...


class AuditLog(Protocol):
    """Append-only trail of each user's operations; `record` never blocks the caller."""

    def record(self, entry: AuditEntry) -> None: ...

    async def list(
        self, *, user_id: str | None = None, limit: int = 100
    ) -> Sequence[AuditEntry]: ...


class PasswordHasher(Protocol):
    async def hash(self, password: str) -> str: ...

    async def verify(self, password_hash: str, password: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: str
    version: int  # the user's token version when it was issued; logout and password change bump it
    expires_at: datetime


class TokenService(Protocol):
    def issue(self, user_id: str, version: int) -> IssuedToken: ...

    def verify(self, token: str) -> TokenClaims:
        """The token's claims, or Unauthorized for a forged, malformed or expired token."""
        ...
