"""Client frames of /ws: each parsed into its typed model, then one use-case call and its answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapters.bridge import envelope_of
from adapters.event_bus import Envelope
from adapters.follow import Position, ReadStored, paged
from adapters.websocket import SocketConnection
from domain.approvals import ApprovalService
from domain.chat import ChatService
from domain.conversations import ConversationService
from domain.errors import CursorExpired, DomainError, StorageUnavailable
from entrypoints.errors import OUTAGE_ANSWERS
from entrypoints.frames import (
    ApprovalFrame,
    CancelFrame,
    ChatFrame,
    ClientFrame,
    FrameError,
    PingFrame,
    ResumeFrame,
    parse,
)


def run_reader(conversations: ConversationService, user_id: str) -> Callable[[str], ReadStored]:
    """A run's stored events after a position, a page at a time: for a resume by run, and for a
    socket that must fill a gap in a run's live events from the log."""

    def reader(run_id: str) -> ReadStored:
        async def of_run(position: Position, limit: int) -> list[Envelope]:
            stored = await conversations.run_events(user_id, run_id, position.seq(run_id), limit)
            return [envelope_of(event) for event in stored]

        return paged(of_run)

    return reader


class FrameDispatcher:
    """Handles one socket's frames in order; every failure is an error frame, never a crash."""

    def __init__(self, *, chat: ChatService, approvals: ApprovalService, conversations: ConversationService,
                 connection: SocketConnection, request_id: str) -> None:
        self._chat = chat
        self._approvals = approvals
        self._conversations = conversations
        self._connection = connection
        self._request_id = request_id

    def _error(self, code: str, message: str, client_message_id: str | None = None) -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if client_message_id is not None:
            frame["client_message_id"] = client_message_id
        self._connection.send_json(frame)

    async def handle(self, raw: str) -> None:
        try:
            frame = parse(raw)
        except FrameError as exc:
            self._error(exc.code, exc.message, exc.client_message_id)
            return
        if not isinstance(frame, PingFrame):
            self._connection.budget.asked_database()  # whatever the answer, the question cost that
        try:
            await self._answer(frame)
        except StorageUnavailable as exc:
            # The socket stays: a chat sent again with its client_message_id is not run twice.
            OUTAGE_ANSWERS.note(exc)
            self._error(exc.code, exc.message, frame.client_message_id)
        except DomainError as exc:
            self._error(exc.code, exc.message, frame.client_message_id)

    async def _answer(self, frame: ClientFrame) -> None:
        match frame:
            case ChatFrame():
                await self._chat_frame(frame)
            case CancelFrame():
                await self._chat.cancel(self._connection.user_id, run_id=frame.run_id,
                                        client_message_id=frame.client_message_id)
            case ResumeFrame():
                await self._resume_frame(frame)
            case ApprovalFrame():
                await self._approval_frame(frame)
            case PingFrame():
                self._connection.send_json({"type": "pong"})

    async def _chat_frame(self, frame: ChatFrame) -> None:
        submission = await self._chat.submit(
            user_id=self._connection.user_id, text=frame.message, request_id=self._request_id,
            thread_id=frame.thread_id, client_message_id=frame.client_message_id,
            multitask=frame.multitask,
        )
        run = submission.run
        # Queued before the run's first event can be published: the ack always comes first.
        self._connection.send_json({"type": "ack", "client_message_id": frame.client_message_id,
                                    "run_id": run.id, "thread_id": run.thread_id,
                                    "status": run.status.value})

    async def _approval_frame(self, frame: ApprovalFrame) -> None:
        """The decision's events (approval_decided, then the tool) are the answer; no ack."""
        await self._approvals.decide(self._connection.user_id, frame.run_id, frame.tool_call_id,
                                     approve=frame.approve, reason=frame.reason, remember=frame.remember)

    async def _resume_frame(self, frame: ResumeFrame) -> None:
        user_id = self._connection.user_id
        cursor, run_id = frame.cursor, frame.run_id
        if cursor is not None:

            async def after_cursor(position: Position, limit: int) -> list[Envelope]:
                stored = await self._conversations.events_after_cursor(user_id, position.cursor or cursor,
                                                                       limit)
                return [envelope_of(event) for event in stored]
            try:
                await self._connection.resume(paged(after_cursor), Position(cursor=cursor),
                                              skip=self._connection.sent_before_first_frame)
            except CursorExpired:
                self._connection.send_json({"type": "resync", "reason": "cursor_expired"})
            return

        await self._connection.resume(run_reader(self._conversations, user_id)(run_id),
                                      Position({run_id: frame.after_seq}))
