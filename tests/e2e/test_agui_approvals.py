"""Approvals over AG-UI, from outside: a run that asks ends its AG-UI run with the interrupt outcome,
and the next RunAgentInput's `resume` answers it; every event is checked against the ag-ui-protocol
models (parse_sse) and the sequencing rules (assert_valid_order).

The builtin model's "Forget my locker code" calls delete_notes, whose policy is `ask`.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from ag_ui.core import BaseEvent, EventType

from entrypoints.agui_translate import APPROVAL_ANSWER_SCHEMA
from entrypoints.http.schemas import AguiApprovalAnswer
from tests.e2e.client import Server, User, register
from tests.e2e.test_agui import answer_text, assert_valid_order, post_agui, run_input
from tests.helpers import eventually

REMEMBER = "Remember that my locker code is 4417"
FORGET = "Forget my locker code"
FORGOTTEN = "Done: I forgot your locker code is 4417."
NOT_USED = "OK, I did not use delete_notes: you did not approve it."
APPROVE = {"approved": True}


def resume_input(thread_id: str, interrupt_id: str, status: str = "resolved", *,
                 payload: Any = None, run_id: str | None = None) -> dict[str, Any]:
    """A resuming RunAgentInput: the same thread, a new runId, the answer in `resume`."""
    entry: dict[str, Any] = {"interruptId": interrupt_id, "status": status}
    if payload is not None:
        entry["payload"] = payload
    body = run_input(None, thread_id=thread_id, run_id=run_id,
                     history=[{"id": "u1", "role": "user", "content": FORGET}])
    return {**body, "resume": [entry]}


async def notes_of(user: User) -> list[str]:
    notes = await user.server.container.notes()
    return [n.text for n in await notes.search(user.user_id, "locker code")]


async def ask_to_forget(user: User) -> tuple[str, list[BaseEvent]]:
    """REMEMBER, then FORGET in the same thread: (the thread, FORGET's events, ending interrupted)."""
    _, _, remembered = await post_agui(user, run_input(REMEMBER))
    thread_id = remembered[0].thread_id
    status, _, events = await post_agui(user, run_input(FORGET, thread_id=thread_id))
    assert status == 200
    assert_valid_order(events)
    return thread_id, events


def the_interrupt(events: list[BaseEvent]) -> Any:
    finished = events[-1]
    assert finished.type is EventType.RUN_FINISHED and finished.outcome is not None, events[-1]
    assert finished.outcome.type == "interrupt" and len(finished.outcome.interrupts) == 1
    return finished.outcome.interrupts[0]


def message_ids(events: list[BaseEvent]) -> set[str]:
    return {getattr(e, "message_id", None) for e in events} - {None}


async def test_an_approval_ends_the_ag_ui_run_interrupted_and_resume_approves_it(server: Server) -> None:
    alice = await register(server)
    thread_id, events = await ask_to_forget(alice)

    # The tool call the run proposes, then RUN_FINISHED with the interrupt outcome.
    start = next(e for e in events if e.type is EventType.TOOL_CALL_START)
    assert start.tool_call_name == "delete_notes"
    args = "".join(e.delta for e in events if e.type is EventType.TOOL_CALL_ARGS)
    assert json.loads(args) == {"query": "locker code"}
    assert EventType.TOOL_CALL_RESULT not in [e.type for e in events]
    interrupt = the_interrupt(events)
    assert interrupt.id == interrupt.tool_call_id == start.tool_call_id
    assert interrupt.reason == "tool_call" and "delete_notes" in interrupt.message
    assert interrupt.expires_at.endswith("Z")
    assert interrupt.response_schema["required"] == ["approved"]
    assert interrupt.metadata["goldenpath"] == {"tool": "delete_notes", "arguments": {"query": "locker code"}}
    our_run = events[0].metadata["goldenpath"]["runId"]
    assert events[-1].metadata["goldenpath"]["runId"] == our_run
    assert events[-1].result is None
    status, run = await alice.http("GET", f"/api/runs/{our_run}")
    assert status == 200 and run["status"] == "waiting"
    assert run["pending_approvals"][0]["tool_call_id"] == interrupt.id

    # The next run resumes it: the same goldenpath run goes on, in a new AG-UI run.
    answer = resume_input(thread_id, interrupt.id, payload=APPROVE)
    status, _, resumed = await post_agui(alice, answer)
    assert status == 200
    assert_valid_order(resumed, carried=frozenset({interrupt.id}))
    started, finished = resumed[0], resumed[-1]
    assert started.run_id == answer["runId"] and started.thread_id == thread_id
    assert started.metadata["goldenpath"] == {"runId": our_run, "newThread": False, "resumes": interrupt.id}
    decided = next(e for e in resumed if e.type is EventType.CUSTOM)
    assert decided.name == "goldenpath.approval_decided"
    assert decided.value == {"tool_call_id": interrupt.id, "approved": True, "by": "user"}
    # Not started again: its result comes against the call the interrupted run started.
    assert EventType.TOOL_CALL_START not in [e.type for e in resumed]
    result = next(e for e in resumed if e.type is EventType.TOOL_CALL_RESULT)
    assert result.tool_call_id == interrupt.id
    assert json.loads(result.content)["result"]["deleted"] == 1
    assert finished.type is EventType.RUN_FINISHED and finished.outcome is None
    assert finished.run_id == answer["runId"] and finished.metadata["goldenpath"]["runId"] == our_run
    assert FORGOTTEN in answer_text(resumed) and finished.result["text"].endswith(FORGOTTEN)
    assert not message_ids(events) & message_ids(resumed)  # the client keeps both runs' messages
    assert await notes_of(alice) == []
    status, run = await alice.http("GET", f"/api/runs/{our_run}")
    assert run["status"] == "completed"

    # The same resume again (a retry): the same continuation, and nothing decided twice.
    status, _, again = await post_agui(alice, answer)
    assert status == 200
    assert_valid_order(again, carried=frozenset({interrupt.id}))
    assert [e.type for e in again] == [e.type for e in resumed] and answer_text(again) == answer_text(resumed)
    # The other answer now: refused, in the API's error form.
    status, _, body = await post_agui(alice, resume_input(thread_id, interrupt.id, "cancelled"))
    assert status == 409 and body["error"]["code"] == "conflict"
    assert "approved" in body["error"]["message"]
    # A retry of the interrupted run's own request replays it as it was: up to its interrupt.
    first_request = events[0].run_id
    status, _, replay = await post_agui(alice, run_input(FORGET, thread_id=thread_id, run_id=first_request))
    assert status == 200
    assert_valid_order(replay)
    assert the_interrupt(replay).id == interrupt.id and replay[0].metadata["goldenpath"]["runId"] == our_run


async def test_a_cancelled_resume_denies_the_call_and_the_model_says_so(server: Server) -> None:
    alice = await register(server)
    thread_id, events = await ask_to_forget(alice)
    interrupt = the_interrupt(events)
    status, _, resumed = await post_agui(alice, resume_input(thread_id, interrupt.id, "cancelled"))
    assert status == 200
    assert_valid_order(resumed, carried=frozenset({interrupt.id}))
    decided = next(e for e in resumed if e.type is EventType.CUSTOM)
    assert decided.value == {"tool_call_id": interrupt.id, "approved": False, "by": "user"}
    result = next(e for e in resumed if e.type is EventType.TOOL_CALL_RESULT)
    assert result.tool_call_id == interrupt.id and json.loads(result.content)["error"] == "denied"
    assert resumed[-1].type is EventType.RUN_FINISHED and resumed[-1].outcome is None
    assert NOT_USED in answer_text(resumed)
    assert await notes_of(alice) == ["my locker code is 4417"]


async def test_a_resolved_resume_can_deny_with_a_reason_and_approve_for_the_thread(server: Server) -> None:
    alice = await register(server)
    thread_id, events = await ask_to_forget(alice)
    interrupt = the_interrupt(events)
    status, _, denied = await post_agui(alice, resume_input(
        thread_id, interrupt.id, payload={"approved": False, "reason": "not now"}))
    assert status == 200
    decided = next(e for e in denied if e.type is EventType.CUSTOM)
    assert decided.value == {"tool_call_id": interrupt.id, "approved": False, "by": "user",
                             "reason": "not now"}
    assert NOT_USED in answer_text(denied)

    # Approved with remember "thread": the next call of delete_notes in this thread does not ask.
    _, _, asked = await post_agui(alice, run_input(FORGET, thread_id=thread_id))
    second = the_interrupt(asked)
    assert second.id != interrupt.id
    status, _, approved = await post_agui(alice, resume_input(
        thread_id, second.id, payload={"approved": True, "remember": "thread"}))
    assert status == 200 and approved[-1].type is EventType.RUN_FINISHED
    assert await notes_of(alice) == []
    _, _, unasked = await post_agui(alice, run_input(FORGET, thread_id=thread_id))
    assert_valid_order(unasked)
    assert unasked[-1].type is EventType.RUN_FINISHED and unasked[-1].outcome is None
    decided = next(e for e in unasked if e.type is EventType.CUSTOM)
    assert decided.name == "goldenpath.approval_decided" and decided.value["by"] == "grant"
    types = [e.type for e in unasked]
    assert types.index(EventType.CUSTOM) < types.index(EventType.TOOL_CALL_START) \
        < types.index(EventType.TOOL_CALL_RESULT)


async def test_a_resume_that_answers_nothing_is_refused_and_the_run_still_waits(server: Server) -> None:
    alice, mallory = await register(server), await register(server)
    thread_id, events = await ask_to_forget(alice)
    interrupt = the_interrupt(events)
    our_run = events[0].metadata["goldenpath"]["runId"]

    refused = [
        (alice, resume_input(thread_id, "call_nope", payload=APPROVE)),   # unknown
        (alice, resume_input(f"thr_{secrets.token_hex(6)}", interrupt.id, payload=APPROVE)),
        (alice, resume_input("", interrupt.id, payload=APPROVE)),         # no thread
        (mallory, resume_input(thread_id, interrupt.id, payload=APPROVE)),  # another user's
    ]
    for user, body in refused:
        status, content_type, error = await post_agui(user, body)
        assert (status, content_type) == (409, "application/json"), (body, error)
        assert error["error"]["code"] == "conflict" and error["error"]["message"]
    invalid = [
        resume_input(thread_id, interrupt.id),                                       # resolved, no payload
        resume_input(thread_id, interrupt.id, payload={"reason": "yes"}),            # no `approved`
        resume_input(thread_id, interrupt.id, payload={"approved": "yes"}),
        resume_input(thread_id, interrupt.id, payload={"approved": True, "editedArgs": {"query": "x"}}),
        resume_input(thread_id, interrupt.id, payload={"approved": True, "remember": "forever"}),
        resume_input(thread_id, interrupt.id, "maybe"),
        {**resume_input(thread_id, interrupt.id, "cancelled"),
         "resume": [{"interruptId": interrupt.id, "status": "cancelled"}] * 2},
    ]
    for body in invalid:
        status, _, error = await post_agui(alice, body)
        assert status == 422 and error["error"]["code"] == "validation_error", (body, error)
    status, run = await alice.http("GET", f"/api/runs/{our_run}")
    assert run["status"] == "waiting"
    assert await notes_of(alice) == ["my locker code is 4417"]


async def test_a_new_message_while_the_thread_waits_gets_the_interrupt_again(server: Server) -> None:
    alice = await register(server)
    thread_id, events = await ask_to_forget(alice)
    interrupt = the_interrupt(events)
    our_run = events[0].metadata["goldenpath"]["runId"]
    status, _, again = await post_agui(alice, run_input("What is 2 + 2?", thread_id=thread_id))
    assert status == 200
    assert_valid_order(again)
    assert [e.type for e in again] == [EventType.RUN_STARTED, EventType.RUN_FINISHED]
    assert again[0].metadata["goldenpath"] == {"runId": our_run, "newThread": False, "pending": True}
    assert the_interrupt(again).model_dump() == interrupt.model_dump()
    status, history = await alice.http("GET", f"/api/threads/{thread_id}/messages")
    assert all(m["text"] != "What is 2 + 2?" for m in history["messages"])  # not run, not stored
    # Answered, the thread takes new messages again.
    _, _, resumed = await post_agui(alice, resume_input(thread_id, interrupt.id, payload=APPROVE))
    assert resumed[-1].type is EventType.RUN_FINISHED and resumed[-1].outcome is None
    _, _, after = await post_agui(alice, run_input("What is 2 + 2?", thread_id=thread_id))
    assert after[-1].type is EventType.RUN_FINISHED and "4" in answer_text(after)


async def test_an_interrupt_answered_elsewhere_resumes_as_a_replay_of_that_decision(server: Server) -> None:
    alice = await register(server)
    thread_id, events = await ask_to_forget(alice)
    interrupt = the_interrupt(events)
    our_run = events[0].metadata["goldenpath"]["runId"]
    status, body = await alice.http("POST", f"/api/runs/{our_run}/approvals",
                                    json={"tool_call_id": interrupt.id, "approve": True})
    assert status == 202, body
    # The AG-UI client answers the same: it gets the continuation; the other answer is refused.
    status, _, resumed = await post_agui(alice, resume_input(thread_id, interrupt.id, payload=APPROVE))
    assert status == 200
    assert_valid_order(resumed, carried=frozenset({interrupt.id}))
    assert FORGOTTEN in answer_text(resumed) and resumed[-1].outcome is None
    status, _, error = await post_agui(alice, resume_input(thread_id, interrupt.id,
                                                           payload={"approved": False}))
    assert status == 409 and "approved" in error["error"]["message"]


async def test_an_expired_or_cancelled_interrupt_cannot_be_resumed(make_server) -> None:
    server: Server = await make_server(approvals={"timeout_s": 0.5}, runs={"lease_ttl_s": 1})
    alice = await register(server)
    thread_id, events = await ask_to_forget(alice)
    interrupt = the_interrupt(events)
    our_run = events[0].metadata["goldenpath"]["runId"]

    async def ended() -> bool:
        _, run = await alice.http("GET", f"/api/runs/{our_run}")
        return run["status"] == "cancelled"

    await eventually(ended, what="the unanswered question timing out", timeout=30)
    status, _, error = await post_agui(alice, resume_input(thread_id, interrupt.id, payload=APPROVE))
    assert status == 409 and "expired" in error["error"]["message"]

    # Cancelled while it waited: nothing to answer either. On a server whose questions do not lapse
    # in half a second: on a busy machine this one would otherwise expire before the cancel.
    server = await make_server(runs={"lease_ttl_s": 1})
    alice = await register(server)
    thread_id, asked = await ask_to_forget(alice)
    second = the_interrupt(asked)
    status, _ = await alice.http("POST", f"/api/runs/{asked[0].metadata['goldenpath']['runId']}/cancel")
    assert status == 202
    status, _, error = await post_agui(alice, resume_input(thread_id, second.id, "cancelled"))
    assert status == 409 and "ended" in error["error"]["message"]
    assert await notes_of(alice) == ["my locker code is 4417"]


def test_the_interrupts_response_schema_is_what_a_resume_payload_is_read_as() -> None:
    read_as = AguiApprovalAnswer.model_json_schema()
    assert APPROVAL_ANSWER_SCHEMA["properties"].keys() == read_as["properties"].keys()
    assert APPROVAL_ANSWER_SCHEMA["required"] == read_as["required"]
    assert APPROVAL_ANSWER_SCHEMA["additionalProperties"] is read_as["additionalProperties"] is False
    assert APPROVAL_ANSWER_SCHEMA["properties"]["reason"]["maxLength"] \
        == read_as["properties"]["reason"]["maxLength"]
