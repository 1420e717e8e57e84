"""FrameDispatcher: a frame becomes one use-case call and one answer; every failure an error frame."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from container.settings import SecuritySettings
from domain.chat import Submission
from domain.entities import Run, RunStatus
from domain.errors import NotFound, StorageUnavailable
from domain.lanes import Multitask
from entrypoints.ws_frames import FrameDispatcher
from entrypoints.ws_limits import user_budget


class FakeChat:
    """Stands in for ChatService: records each call, answers with a queued run, or raises `fails`."""

    def __init__(self, fails: Exception | None = None) -> None:
        self.fails = fails
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def submit(self, **kwargs: Any) -> Submission:
        self.calls.append(("submit", kwargs))
        if self.fails is not None:
            raise self.fails
        return Submission(Run(id="run_1", user_id=kwargs["user_id"], thread_id=kwargs["thread_id"] or "thr_1",
                              status=RunStatus.QUEUED, created_at=datetime(2026, 1, 1, tzinfo=UTC),
                              client_message_id=kwargs["client_message_id"]))

    async def cancel(self, user_id: str, **kwargs: Any) -> None:
        self.calls.append(("cancel", {"user_id": user_id, **kwargs}))
        if self.fails is not None:
            raise self.fails


class FakeConversations:
    """Stands in for ConversationService; no frame here reads stored events."""


class RecordingConnection:
    """Stands in for a SocketConnection: keeps every frame sent; a test can see it was never closed."""

    user_id = "usr_1"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed = False
        self.budget = user_budget(SecuritySettings())

    def send_json(self, frame: dict[str, Any]) -> None:
        self.sent.append(frame)

    def close_soon(self, code: int, message: str) -> None:
        self.closed = True


def dispatcher(chat: FakeChat) -> tuple[FrameDispatcher, RecordingConnection]:
    connection = RecordingConnection()
    return FrameDispatcher(chat=chat, approvals=None, conversations=FakeConversations(),  # type: ignore[arg-type]
                           connection=connection, request_id="req_1"), connection  # type: ignore[arg-type]


async def test_a_chat_frame_is_submitted_and_acked() -> None:
    chat = FakeChat()
    frames, connection = dispatcher(chat)
    await frames.handle(json.dumps({"type": "chat", "message": "hi", "client_message_id": "cm_1",
                                    "multitask": "reject"}))
    assert chat.calls == [("submit", {"user_id": "usr_1", "text": "hi", "request_id": "req_1",
                                      "thread_id": None, "client_message_id": "cm_1",
                                      "multitask": Multitask.REJECT})]
    assert connection.sent == [{"type": "ack", "client_message_id": "cm_1", "run_id": "run_1",
                                "thread_id": "thr_1", "status": "queued"}]


async def test_a_cancel_names_its_run() -> None:
    chat = FakeChat()
    frames, connection = dispatcher(chat)
    await frames.handle('{"type": "cancel", "run_id": "run_7"}')
    assert chat.calls == [("cancel", {"user_id": "usr_1", "run_id": "run_7", "client_message_id": None})]
    assert connection.sent == []  # the answer is the run's agent_cancelled event


async def test_a_cancel_without_ids_is_invalid_message_and_cancels_nothing() -> None:
    chat = FakeChat()
    frames, connection = dispatcher(chat)
    await frames.handle('{"type": "cancel"}')
    assert chat.calls == []
    [error] = connection.sent
    assert error["type"] == "error" and error["code"] == "invalid_message" and "run_id" in error["message"]


async def test_a_domain_error_is_an_error_frame_naming_the_client_message_id() -> None:
    frames, connection = dispatcher(FakeChat(fails=NotFound("There is no such thread.")))
    await frames.handle(json.dumps({"type": "chat", "message": "hi", "thread_id": "thr_x",
                                    "client_message_id": "cm_2"}))
    assert connection.sent == [{"type": "error", "code": "not_found", "message": "There is no such thread.",
                                "client_message_id": "cm_2"}]


async def test_a_refused_frame_names_its_client_message_id_too() -> None:
    frames, connection = dispatcher(FakeChat())
    await frames.handle('{"type": "barrier-1", "client_message_id": "barrier-1"}')
    [error] = connection.sent
    assert error["code"] == "unknown_type" and error["client_message_id"] == "barrier-1"


async def test_a_database_outage_answers_server_not_ready_and_keeps_the_socket() -> None:
    frames, connection = dispatcher(FakeChat(fails=StorageUnavailable("The database is away; try again.")))
    await frames.handle(json.dumps({"type": "chat", "message": "hi", "client_message_id": "cm_3"}))
    await frames.handle('{"type": "ping"}')
    assert connection.sent == [
        {"type": "error", "code": "server_not_ready", "message": "The database is away; try again.",
         "client_message_id": "cm_3"},
        {"type": "pong"},
    ]
    assert not connection.closed


async def test_bad_json_is_answered_and_the_next_frame_still_is() -> None:
    frames, connection = dispatcher(FakeChat())
    await frames.handle("{oops")
    await frames.handle('{"type": "ping"}')
    assert [f.get("code", f["type"]) for f in connection.sent] == ["invalid_json", "pong"]
