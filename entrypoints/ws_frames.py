"""Client frames of /ws: parse, validate and turn each into one use-case call."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from loguru import logger

from adapters.bridge import envelope_of
from adapters.event_bus import Envelope
from adapters.follow import Position
from adapters.websocket import SocketConnection
from domain.chat import ChatService
from domain.conversations import ConversationService
from domain.errors import CursorExpired, DomainError, StorageUnavailable
from domain.lanes import Multitask

_MAX_ID = 128


class FrameError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _optional_id(frame: dict[str, Any], name: str) -> str | None:
    value = frame.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_ID:
        raise FrameError("invalid_message",
                         f"'{name}' must be a non-empty string of at most {_MAX_ID} characters.")
    return value


def parse(raw: str) -> dict[str, Any]:
    try:
        frame = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise FrameError("invalid_json", "That frame is not valid JSON.") from None
    if not isinstance(frame, dict):
        raise FrameError("invalid_message", "A frame must be a JSON object with a 'type'.")
    if not isinstance(frame.get("type"), str):
        raise FrameError("invalid_message", "A frame needs a string 'type'.")
    return frame


class FrameDispatcher:
    """Handles one socket's frames in order; every failure is an error frame, never a crash."""

    def __init__(self, *, chat: ChatService, conversations: ConversationService,
                 connection: SocketConnection, request_id: str) -> None:
        self._chat = chat
        self._conversations = conversations
        self._connection = connection
        self._request_id = request_id

    def _error(self, code: str, message: str, client_message_id: str | None = None) -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if client_message_id is not None:
            frame["client_message_id"] = client_message_id
        self._connection.send_json(frame)

    async def handle(self, raw: str) -> None:
        client_message_id = None
        try:
            frame = parse(raw)
            if isinstance(frame.get("client_message_id"), str):
                client_message_id = frame["client_message_id"][:_MAX_ID]
            handler = {"chat": self._chat_frame, "cancel": self._cancel_frame,
                       "ping": self._ping_frame,
                       "resume": self._resume_frame}.get(frame["type"])
            if handler is None:
                raise FrameError("unknown_type", f"Unknown frame type {frame['type'][:40]!r}; "
                                 "expected chat, cancel, resume or ping.")
            await handler(frame)
        except FrameError as exc:
            self._error(exc.code, exc.message, client_message_id)
        except StorageUnavailable as exc:
            # The socket stays: a chat sent again with its client_message_id is not run twice.
            logger.warning("database outage answered server_not_ready: {}", type(exc.__cause__).__name__)
            self._error(exc.code, exc.message, client_message_id)
        except DomainError as exc:
            self._error(exc.code, exc.message, client_message_id)

    async def _chat_frame(self, frame: dict[str, Any]) -> None:
        message = frame.get("message")
        if not isinstance(message, str):
            raise FrameError("invalid_message", "A chat frame needs a string 'message'.")
        thread_id = _optional_id(frame, "thread_id")
        client_message_id = _optional_id(frame, "client_message_id")
        try:
            multitask = Multitask(frame.get("multitask") or Multitask.ENQUEUE)
        except ValueError:
            raise FrameError("invalid_message",
                             "'multitask' must be one of enqueue, reject or interrupt.") from None
        submission = await self._chat.submit(
            user_id=self._connection.user_id, text=message, request_id=self._request_id,
            thread_id=thread_id, client_message_id=client_message_id, multitask=multitask,
        )
        run = submission.run
        # Queued before the run's first event can be published: the ack always comes first.
        self._connection.send_json({"type": "ack", "client_message_id": client_message_id,
                                    "run_id": run.id, "thread_id": run.thread_id,
                                    "status": run.status.value})

    async def _cancel_frame(self, frame: dict[str, Any]) -> None:
        run_id = _optional_id(frame, "run_id")
        client_message_id = _optional_id(frame, "client_message_id")
        if run_id is None and client_message_id is None:
            raise FrameError("invalid_message", "A cancel frame needs 'run_id' or 'client_message_id'.")
        await self._chat.cancel(self._connection.user_id, run_id=run_id,
                                client_message_id=client_message_id)

    async def _resume_frame(self, frame: dict[str, Any]) -> None:
        user_id = self._connection.user_id
        cursor, run_id = frame.get("cursor"), frame.get("run_id")
        if cursor is not None:
            if not isinstance(cursor, str) or not cursor or len(cursor) > _MAX_ID:
                raise FrameError("invalid_message", "'cursor' must be a cursor this server gave out.")

            async def after_cursor(_: Position) -> Iterable[Envelope]:
                return map(envelope_of, await self._conversations.events_after_cursor(user_id, cursor))
            try:
                await self._connection.resume(after_cursor, Position(cursor=cursor))
            except CursorExpired:
                self._connection.send_json({"type": "resync", "reason": "cursor_expired"})
            return
        if run_id is None:
            raise FrameError("invalid_message", "A resume frame needs 'cursor', or 'run_id' and 'after_seq'.")
        run_id = _optional_id(frame, "run_id")
        after_seq = frame.get("after_seq", 0)
        if not isinstance(after_seq, int) or isinstance(after_seq, bool) or not 0 <= after_seq < 2**31:
            raise FrameError("invalid_message", "'after_seq' must be a whole number, 0 or more.")

        async def of_run(_: Position) -> Iterable[Envelope]:
            return map(envelope_of, await self._conversations.run_events(user_id, run_id, after_seq))
        await self._connection.resume(of_run, Position({run_id: after_seq}))

    async def _ping_frame(self, frame: dict[str, Any]) -> None:
        self._connection.send_json({"type": "pong"})
