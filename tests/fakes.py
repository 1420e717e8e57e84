"""Hand-written fakes of the domain's ports, shared by all tests."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from dependency_injector import providers

from container import Container, Settings
from domain.approval_policy import ApprovalGate
from domain.entities import (
    ApprovalGrant,
    AuditEntry,
    McpServer,
    Message,
    Note,
    Role,
    Run,
    RunStatus,
    Thread,
    User,
)
from domain.errors import Conflict, LeaseLost
from domain.events import AgentEvent, EventType, run_end
from domain.limits import EngineLimits
from domain.llm import ModelChunk, ModelRequest, TextDelta
from domain.tools import Tool, ToolBox
from domain.tools.base import BlockingTool


def engine_limits(**changes: float) -> EngineLimits:
    """The limits the container builds from the settings' defaults, with a test's changes."""
    container = Container(settings=providers.Object(Settings.model_construct()))
    return replace(container.engine_limits(), **changes)


def toolbox(tools: Iterable[Tool | BlockingTool] = ()) -> ToolBox:
    """A toolbox with the settings' default tool timeout."""
    settings = Settings.model_construct()
    return ToolBox(tools, timeout_s=settings.limits.tool_timeout_s, pause_s=settings.tools.pause_s)


def approval_gate(clock: Any = None, grants: InMemoryApprovalGrantRepository | None = None,
                  timeout_s: float = 3600.0) -> ApprovalGate:
    """The gate with nothing granted (or `grants`), for tests that build an agent by hand."""
    return ApprovalGate(grants=grants or InMemoryApprovalGrantRepository(),
                        clock=clock or FixedClock(datetime(2026, 11, 21, 12, 0, tzinfo=UTC)),
                        timeout_s=timeout_s)


class FixedClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


class SequentialIds:
    """Predictable ids: note_1, run_2, ..."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._counter)}"


_UNFINISHED = (RunStatus.QUEUED, RunStatus.RUNNING)  # a waiting run is neither: it holds nothing


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


class InMemoryNoteRepository:
    """Notes in a list; search ranks a user's notes by how many query words they share."""

    def __init__(self) -> None:
        self.notes: list[Note] = []

    async def add(self, note: Note) -> Note:
        if note.key is not None:
            for kept in self.notes:
                if kept.user_id == note.user_id and kept.key == note.key:
                    return kept
        self.notes.append(note)
        return note

    async def search(self, user_id: str, query: str, limit: int = 5) -> Sequence[Note]:
        wanted = _words(query)
        scored = [(len(wanted & _words(note.text)), note)
                  for note in self.notes if note.user_id == user_id]
        matches = [(score, note) for score, note in scored if score > 0]
        # Best match first; among equals the newest, as a person would correct an old fact.
        matches.sort(key=lambda pair: (pair[0], pair[1].created_at), reverse=True)
        return [note for _, note in matches[:limit]]

    async def delete_matching(self, user_id: str, query: str) -> Sequence[Note]:
        wanted = {w for w in _words(query) if len(w) >= 3}
        gone = [note for note in self.notes
                if wanted and note.user_id == user_id and wanted <= _words(note.text)]
        self.notes = [note for note in self.notes if note not in gone]
        return gone


class InMemoryMcpServerRepository:
    def __init__(self) -> None:
        self.servers: list[McpServer] = []

    async def add(self, server: McpServer) -> None:
        if any((s.user_id, s.name) == (server.user_id, server.name) for s in self.servers):
            raise Conflict(f"You have an MCP server named {server.name!r} already.")
        self.servers.append(server)

    async def list_for_user(self, user_id: str) -> Sequence[McpServer]:
        return [s for s in self.servers if s.user_id == user_id]

    async def delete(self, user_id: str, name: str) -> bool:
        kept = [s for s in self.servers if (s.user_id, s.name) != (user_id, name)]
        deleted, self.servers = len(kept) != len(self.servers), kept
        return deleted


class InMemoryApprovalGrantRepository:
    def __init__(self) -> None:
        self.grants: list[ApprovalGrant] = []

    def add(self, grant: ApprovalGrant) -> None:
        if not any((g.user_id, g.tool, g.thread_id) == (grant.user_id, grant.tool, grant.thread_id)
                   for g in self.grants):
            self.grants.append(grant)

    async def list_for_user(self, user_id: str) -> Sequence[ApprovalGrant]:
        return [g for g in self.grants if g.user_id == user_id]

    async def delete(self, user_id: str, grant_id: str) -> bool:
        kept = [g for g in self.grants if not (g.user_id == user_id and g.id == grant_id)]
        deleted = len(kept) != len(self.grants)
        self.grants = kept
        return deleted

    async def covers(self, user_id: str, tool: str, thread_id: str) -> bool:
        return any(g.user_id == user_id and g.tool == tool and g.thread_id in (None, thread_id)
                   for g in self.grants)


class InMemoryUserRepository:
    def __init__(self) -> None:
        self.users: dict[str, User] = {}

    async def add(self, user: User) -> None:
        if any(u.username == user.username for u in self.users.values()):
            raise Conflict("That username is taken.")
        self.users[user.id] = user

    async def get(self, user_id: str) -> User | None:
        return self.users.get(user_id)

    async def get_by_username(self, username: str) -> User | None:
        return next((u for u in self.users.values() if u.username == username), None)

    async def list(self) -> Sequence[User]:
        return list(self.users.values())

    async def bump_token_version(self, user_id: str) -> int:
        user = self.users[user_id]
        self.users[user_id] = replace(user, token_version=user.token_version + 1)
        return user.token_version + 1

    async def set_password(self, user_id: str, password_hash: str) -> int:
        version = await self.bump_token_version(user_id)
        self.users[user_id] = replace(self.users[user_id], password_hash=password_hash)
        return version


class InMemoryThreadRepository:
    def __init__(self) -> None:
        self.threads: dict[str, Thread] = {}
        self.forked_messages: list[Message] = []  # the copies add_fork was given (messages are elsewhere)

    async def add(self, thread: Thread) -> None:
        self.threads[thread.id] = thread

    async def get(self, user_id: str, thread_id: str) -> Thread | None:
        thread = self.threads.get(thread_id)
        return thread if thread is not None and thread.user_id == user_id else None

    async def page(self, user_id: str, *, query: str | None = None,
                   after: tuple[datetime, str] | None = None, limit: int = 100) -> Sequence[Thread]:
        found = (t for t in self.threads.values()
                 if t.user_id == user_id and (query is None or query.lower() in t.title.lower()))
        mine = sorted(found, key=lambda t: (-t.updated_at.timestamp(), t.id))
        if after is not None:
            mine = [t for t in mine if (-t.updated_at.timestamp(), t.id) > (-after[0].timestamp(), after[1])]
        return mine[:limit]

    async def rename(self, user_id: str, thread_id: str, title: str) -> Thread | None:
        if await self.get(user_id, thread_id) is None:
            return None
        self.threads[thread_id] = replace(self.threads[thread_id], title=title)
        return self.threads[thread_id]

    async def add_fork(self, thread: Thread, messages: Sequence[Message]) -> None:
        self.threads[thread.id] = thread
        self.forked_messages = list(messages)

    async def touch(self, thread_id: str, at: datetime) -> None:
        if thread_id in self.threads:
            self.threads[thread_id] = replace(self.threads[thread_id], updated_at=at)

    async def delete(self, user_id: str, thread_id: str) -> bool:
        if await self.get(user_id, thread_id) is None:
            return False
        del self.threads[thread_id]
        return True


class InMemoryMessageRepository:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def add(self, message: Message) -> None:
        self.messages.append(message)

    async def list_for_thread(self, user_id: str, thread_id: str) -> Sequence[Message]:
        return [m for m in self.messages if m.thread_id == thread_id and m.user_id == user_id]

    async def page(self, user_id: str, thread_id: str, *, before: tuple[datetime, str] | None = None,
                   limit: int = 50) -> Sequence[Message]:
        mine = sorted(await self.list_for_thread(user_id, thread_id), key=lambda m: (m.created_at, m.id),
                      reverse=True)
        return [m for m in mine if before is None or (m.created_at, m.id) < before][:limit]


class InMemoryRunRepository:
    def __init__(self, threads: InMemoryThreadRepository, messages: InMemoryMessageRepository,
                 grants: InMemoryApprovalGrantRepository | None = None) -> None:
        self.runs: dict[str, Run] = {}
        self.checkpoints: dict[str, dict[str, Any]] = {}  # shared with the event log (as one database)
        self._threads = threads
        self._messages = messages
        self._grants = grants or InMemoryApprovalGrantRepository()

    async def add(self, run: Run, message: Message | None = None, *, new_thread: Thread | None = None
                  ) -> None:
        if run.client_message_id is not None and any(
            r.user_id == run.user_id and r.client_message_id == run.client_message_id
            for r in self.runs.values()
        ):
            raise Conflict("A run for that client_message_id exists already.")
        if new_thread is not None:
            await self._threads.add(new_thread)
        self.runs[run.id] = run
        if message is not None:
            await self._messages.add(message)
            await self._threads.touch(run.thread_id, message.created_at)

    async def get(self, user_id: str, run_id: str) -> Run | None:
        run = self.runs.get(run_id)
        return run if run is not None and run.user_id == user_id else None

    async def get_many(self, user_id: str, run_ids: Collection[str]) -> Sequence[Run]:
        return [run for run_id in run_ids if (run := await self.get(user_id, run_id)) is not None]

    async def get_by_client_message_id(self, user_id: str, client_message_id: str) -> Run | None:
        return next((r for r in self.runs.values()
                     if r.user_id == user_id and r.client_message_id == client_message_id), None)

    async def mark_running(self, run_id: str, epoch: int) -> None:
        run = self.runs[run_id]
        if run.lease_epoch == epoch and run.status is RunStatus.QUEUED:
            self.runs[run_id] = replace(run, status=RunStatus.RUNNING)

    def end(self, event: AgentEvent) -> None:
        """What a terminal event stores with it (the SQL event log does it in its transaction)."""
        status, error = run_end(event)
        self.runs[event.run_id] = replace(self.runs[event.run_id], status=status,
                                          finished_at=event.ts, error=error)
        if event.type is EventType.AGENT_COMPLETED:
            self._messages.messages.append(Message(
                id=event.data["message_id"], thread_id=event.thread_id, user_id=event.user_id,
                role=Role.ASSISTANT, text=event.data["text"], created_at=event.ts, run_id=event.run_id))
            self._threads.threads[event.thread_id] = replace(self._threads.threads[event.thread_id],
                                                             updated_at=event.ts)

    def wait(self, event: AgentEvent) -> None:
        """What approval_required stores with it: the run waits, holding no lease."""
        run = self.runs[event.run_id]
        if run.status is RunStatus.RUNNING:
            self.runs[run.id] = replace(run, status=RunStatus.WAITING, owner=None, lease_expires_at=None,
                                        wait_expires_at=datetime.fromisoformat(event.data["expires_at"]))

    def refuses(self, event: AgentEvent) -> bool:
        """The event log's fence: the writer no longer holds the run, or the run ended."""
        if event.epoch is None:
            return False
        run = self.runs.get(event.run_id)
        return run is None or run.lease_epoch != event.epoch or run.status.is_final

    async def count_unfinished(self, user_id: str) -> int:
        return sum(r.user_id == user_id and r.status in _UNFINISHED for r in self.runs.values())

    async def waiting_in_thread(self, user_id: str, thread_id: str) -> Sequence[Run]:
        return sorted((r for r in self.runs.values() if r.user_id == user_id and r.thread_id == thread_id
                       and r.status is RunStatus.WAITING), key=lambda r: (r.created_at, r.id))

    async def waiting_for_user(self, user_id: str, limit: int = 100) -> Sequence[Run]:
        mine = (r for r in self.runs.values() if r.user_id == user_id and r.status is RunStatus.WAITING)
        return sorted(mine, key=lambda r: (r.created_at, r.id))[:limit]

    async def unfinished_before(self, run: Run) -> Run | None:
        return next(iter(sorted((r for r in self.runs.values()
                                 if r.thread_id == run.thread_id and not r.status.is_final
                                 and (r.created_at, r.id) < (run.created_at, run.id)),
                                key=lambda r: (r.created_at, r.id))), None)

    async def claim_waiting(self, run_id: str, *, owner: str, until: datetime,
                            checkpoint: dict[str, Any] | None = None, grant: ApprovalGrant | None = None,
                            unexpired_at: datetime | None = None) -> Run | None:
        run = self.runs.get(run_id)
        lapsed = unexpired_at is not None and (run is None or run.wait_expires_at is None
                                               or run.wait_expires_at <= unexpired_at)
        if run is None or run.status is not RunStatus.WAITING or lapsed:
            return None
        self.runs[run_id] = replace(run, status=RunStatus.RUNNING, owner=owner, lease_expires_at=until,
                                    lease_epoch=run.lease_epoch + 1, wait_expires_at=None)
        if checkpoint is not None:
            self.checkpoints[run_id] = dict(checkpoint)
        if grant is not None:
            self._grants.add(grant)
        return self.runs[run_id]

    async def claim_expired_waiting(self, *, owner: str, now: datetime, until: datetime,
                                    limit: int = 100) -> Sequence[Run]:
        lapsed = [r.id for r in self.runs.values() if r.status is RunStatus.WAITING
                  and r.wait_expires_at is not None and r.wait_expires_at <= now][:limit]
        return [run for run_id in lapsed
                if (run := await self.claim_waiting(run_id, owner=owner, until=until)) is not None]

    async def renew_leases(self, owner: str, until: datetime, run_ids: Collection[str]) -> int:
        mine = [r for r in self.runs.values()
                if r.owner == owner and r.id in run_ids and r.status in _UNFINISHED]
        for run in mine:
            self.runs[run.id] = replace(run, lease_expires_at=until)
        return len(mine)

    async def take_over(self, *, new_owner: str, until: datetime, lapsed_before: datetime | None = None,
                        previous_owner: str | None = None, limit: int = 100) -> Sequence[Run]:
        wanted = [r for r in self.runs.values() if r.status in _UNFINISHED and r.lease_expires_at is not None
                  and (lapsed_before is None or r.lease_expires_at < lapsed_before)
                  and (previous_owner is None or r.owner == previous_owner)][:max(limit, 0)]
        for run in wanted:
            self.runs[run.id] = replace(run, owner=new_owner, lease_expires_at=until,
                                        lease_epoch=run.lease_epoch + 1, takeovers=run.takeovers + 1)
        return sorted((self.runs[r.id] for r in wanted), key=lambda run: run.id)


class InMemoryEventLog:
    """Every event in append order; the cursor is the position. Fenced, and a terminal event
    stores its run's end, like the SQL event log, when it is given the run repository."""

    def __init__(self, runs: InMemoryRunRepository | None = None) -> None:
        self.events: list[AgentEvent] = []
        self.refused: list[AgentEvent] = []
        self.checkpoints: dict[str, dict[str, Any]] = runs.checkpoints if runs is not None else {}
        self._runs = runs
        self._listener: Callable[[list[AgentEvent]], Awaitable[None]] | None = None

    async def append(self, event: AgentEvent) -> AgentEvent:
        return await self.submit(event)

    def submit(self, event: AgentEvent) -> asyncio.Future[AgentEvent]:
        if self._runs is not None and self._runs.refuses(event):
            self.refused.append(event)
            refused: asyncio.Future[AgentEvent] = asyncio.get_running_loop().create_future()
            refused.set_exception(LeaseLost(f"run {event.run_id}: event {event.seq} refused"))
            return refused
        stored = event.with_cursor(f"{len(self.events) + 1:020d}")
        self.events.append(stored)
        if event.checkpoint is not None:
            self.checkpoints[event.run_id] = dict(event.checkpoint)
        if self._runs is not None and event.run_id in self._runs.runs:
            if event.type is EventType.APPROVAL_REQUIRED:
                self._runs.wait(stored)
            elif event.type.is_terminal:
                self._runs.end(stored)
        return asyncio.ensure_future(self._hand_over(stored))

    def listen(self, listener: Callable[[list[AgentEvent]], Awaitable[None]] | None) -> None:
        self._listener = listener

    async def _hand_over(self, stored: AgentEvent) -> AgentEvent:
        if self._listener is not None:
            await self._listener([stored])
        return stored

    async def read_run(self, user_id: str, run_id: str, after_seq: int = 0,
                       limit: int | None = None) -> list[AgentEvent]:
        return [e for e in self.events
                if e.user_id == user_id and e.run_id == run_id and e.seq > after_seq][:limit]

    async def read_runs(self, user_id: str, run_ids: Collection[str]) -> list[AgentEvent]:
        return sorted((e for e in self.events if e.user_id == user_id and e.run_id in run_ids),
                      key=lambda e: (e.run_id, e.seq))

    async def read_user(self, user_id: str, after_cursor: str | None,
                        limit: int | None = None) -> list[AgentEvent]:
        return [e for e in self.events
                if e.user_id == user_id and (after_cursor is None or (e.cursor or "") > after_cursor)][:limit]

    async def checkpoint(self, run_id: str) -> dict[str, Any] | None:
        return self.checkpoints.get(run_id)

    async def last_seq(self, run_id: str) -> int:
        return max((e.seq for e in self.events if e.run_id == run_id), default=0)

    async def prune(self, older_than: datetime) -> int:
        before = len(self.events)
        self.events = [e for e in self.events if e.ts >= older_than]
        return before - len(self.events)

    def types(self, run_id: str) -> list[str]:
        return [e.type.value for e in self.events if e.run_id == run_id]


class InMemoryAuditLog:
    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def record(self, entry: AuditEntry) -> None:
        self.entries.append(entry)

    async def list(self, *, user_id: str | None = None, limit: int = 100) -> Sequence[AuditEntry]:
        chosen = [e for e in self.entries if user_id is None or e.user_id == user_id]
        return list(reversed(chosen))[:limit]


class RecordingSocket:
    """Stands in for a SocketConnection: keeps every frame the bridge delivers."""

    def __init__(self, user_id: str, connection_id: str = "conn_test") -> None:
        self.user_id = user_id
        self.connection_id = connection_id
        self.frames: list[dict] = []

    def deliver(self, envelope) -> bool:
        self.frames.append(json.loads(envelope.frame))
        return True

    high_cursor = None  # catches up from where the bridge saw the bus go

    async def catch_up(self, read) -> None:
        for envelope in await read(None):
            self.deliver(envelope)


class ScriptedModel:
    """A chat model that plays back scripted steps: each step a list of chunks, or an exception.

    `pause_s` waits before each chunk so tests can cancel mid-stream; `hang` never answers.
    """

    name = "scripted"

    def __init__(self, *steps: list[ModelChunk] | Exception, pause_s: float = 0.0,
                 hang: bool = False) -> None:
        self._steps = list(steps)
        self.pause_s = pause_s
        self.hang = hang
        self.requests: list[ModelRequest] = []

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        self.requests.append(request)
        if self.hang:
            await asyncio.Event().wait()
        step = self._steps[min(len(self.requests), len(self._steps)) - 1]
        if isinstance(step, Exception):
            raise step
        for chunk in step:
            if self.pause_s:
                await asyncio.sleep(self.pause_s)
            yield chunk


def answer(text: str) -> list[ModelChunk]:
    """A model step that streams `text` word by word."""
    words = text.split(" ")
    return [TextDelta(w if i == 0 else " " + w) for i, w in enumerate(words)]


class RecordingRunControl:
    """Stands in for the channel to other processes: keeps the cancels it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    async def request_cancel(self, owner: str, run_id: str, reason: str) -> None:
        self.sent.append((owner, run_id, reason))
