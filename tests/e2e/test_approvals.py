"""A person in the loop, over a real socket and real HTTP: a tool call that asks waits for its
user's decision, holding no engine, and goes on however and wherever the decision comes.

The builtin model's "Forget my locker code" calls delete_notes, whose policy is `ask`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.e2e.client import Frame, Server, User, chat, next_of, read_until, recv, register, until_ready
from tests.helpers import eventually

REMEMBER = "Remember that my locker code is 4417"
FORGET = "Forget my locker code"


async def engines_active(server: Server) -> int:
    return (await server.container.engine_factory()).metrics().active


async def ask_to_forget(ws: Any, **fields: Any) -> tuple[Frame, Frame]:
    """Send FORGET; return its ack and the approval_required it ends up waiting on."""
    await ws.send(json.dumps({"type": "chat", "message": FORGET, **fields}))
    ack = await next_of(ws, {"ack"})
    asked = await read_until(ws, lambda f: f.get("run_id") == ack["run_id"]
                             and f["type"] in {"approval_required", "agent_completed", "agent_error"})
    assert asked["type"] == "approval_required", asked
    return ack, asked


async def to_the_end(ws: Any, run_id: str, timeout: float = 20) -> list[Frame]:
    frames: list[Frame] = []
    await read_until(ws, lambda f: f.get("run_id") == run_id and f["type"] in
                     {"agent_completed", "agent_error", "agent_cancelled"}, frames, timeout)
    return [f for f in frames if f.get("run_id") == run_id]


def kinds(frames: list[Frame]) -> list[str]:
    return [f["type"] for f in frames]


async def notes_of(user: User) -> list[str]:
    notes = await user.server.container.notes()
    return [n.text for n in await notes.search(user.user_id, "locker code")]


async def test_approve_runs_the_tool_and_the_run_answers(server: Server) -> None:
    alice = await register(server)
    async with alice.connect() as ws:
        await until_ready(ws)
        await chat(ws, REMEMBER)
        ack, asked = await ask_to_forget(ws)
        data = asked["data"]
        assert data["tool"] == "delete_notes" and data["arguments"] == {"query": "locker code"}
        assert data["expires_at"].endswith("Z")
        # Waiting holds nothing: no engine, and the run says what it waits on.
        async def no_engine() -> bool:
            return await engines_active(server) == 0

        await eventually(no_engine, what="no engine while waiting")
        status, run = await alice.http("GET", f"/api/runs/{ack['run_id']}")
        assert status == 200 and run["status"] == "waiting"
        assert run["pending_approvals"] == [{**data, "seq": asked["seq"]}]
        status, pending = await alice.http("GET", "/api/approvals/pending")
        assert pending == {"approvals": [{"run_id": ack["run_id"], "thread_id": ack["thread_id"], **data,
                                          "seq": asked["seq"]}]}
        await ws.send(json.dumps({"type": "approval", "run_id": ack["run_id"],
                                  "tool_call_id": data["tool_call_id"], "approve": True}))
        rest = await to_the_end(ws, ack["run_id"])
    decided = rest[0]
    assert decided["type"] == "approval_decided"
    assert decided["data"] == {"tool_call_id": data["tool_call_id"], "approved": True, "by": "user"}
    assert kinds(rest)[1:3] == ["tool_executing", "tool_completed"]
    assert rest[2]["data"]["result"]["deleted"] == 1
    assert rest[-1]["type"] == "agent_completed"
    assert rest[-1]["data"]["text"] == "Done: I forgot your locker code is 4417."
    seqs = [f["seq"] for f in rest]
    assert seqs == list(range(asked["seq"] + 1, asked["seq"] + 1 + len(rest)))
    assert await notes_of(alice) == []
    status, run = await alice.http("GET", f"/api/runs/{ack['run_id']}")
    assert run["status"] == "completed" and "pending_approvals" not in run


async def test_deny_over_http_the_tool_does_not_run_and_the_model_answers(server: Server) -> None:
    alice = await register(server)
    async with alice.connect() as ws:
        await until_ready(ws)
        await chat(ws, REMEMBER)
        ack, asked = await ask_to_forget(ws)
        call_id = asked["data"]["tool_call_id"]
        status, body = await alice.http("POST", f"/api/runs/{ack['run_id']}/approvals",
                                        json={"tool_call_id": call_id, "approve": False,
                                              "reason": "not now"})
        assert status == 202, body
        assert body == {"run_id": ack["run_id"], "tool_call_id": call_id, "approved": False,
                        "status": "running"}
        rest = await to_the_end(ws, ack["run_id"])
    assert rest[0]["data"] == {"tool_call_id": call_id, "approved": False, "by": "user", "reason": "not now"}
    completed = [f for f in rest if f["type"] == "tool_completed"]
    assert len(completed) == 1 and completed[0]["data"]["error"] == "denied"
    assert "tool_executing" not in kinds(rest)
    assert rest[-1]["type"] == "agent_completed"
    assert rest[-1]["data"]["text"] == "OK, I did not use delete_notes: you did not approve it."
    assert await notes_of(alice) == ["my locker code is 4417"]
    # Decided already: a second decision is a conflict, an unknown call not found.
    status, body = await alice.http("POST", f"/api/runs/{ack['run_id']}/approvals",
                                    json={"tool_call_id": call_id, "approve": True})
    assert status == 409 and body["error"]["code"] == "conflict"
    status, body = await alice.http("POST", f"/api/runs/{ack['run_id']}/approvals",
                                    json={"tool_call_id": "call_nope", "approve": True})
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_an_unanswered_question_times_out_and_the_run_ends_cancelled(make_server) -> None:
    server = await make_server(approvals={"timeout_s": 0.5}, runs={"lease_ttl_s": 1})
    alice = await register(server)
    async with alice.connect() as ws:
        await until_ready(ws)
        ack, asked = await ask_to_forget(ws)
        rest = await to_the_end(ws, ack["run_id"], timeout=30)
    assert kinds(rest) == ["approval_decided", "agent_cancelled"]
    assert rest[0]["data"] == {"tool_call_id": asked["data"]["tool_call_id"], "approved": False,
                               "by": "timeout"}
    assert rest[1]["data"] == {"reason": "approval_timeout"}
    status, run = await alice.http("GET", f"/api/runs/{ack['run_id']}")
    assert run["status"] == "cancelled" and run["error"] == "approval_timeout"
    status, body = await alice.http("POST", f"/api/runs/{ack['run_id']}/approvals",
                                    json={"tool_call_id": asked["data"]["tool_call_id"], "approve": True})
    assert status == 409 and body["error"]["code"] == "conflict"


async def test_cancel_ends_a_waiting_run(server: Server) -> None:
    alice = await register(server)
    async with alice.connect() as ws:
        await until_ready(ws)
        ack, _ = await ask_to_forget(ws)
        await ws.send(json.dumps({"type": "cancel", "run_id": ack["run_id"]}))
        rest = await to_the_end(ws, ack["run_id"])
    assert kinds(rest) == ["agent_cancelled"] and rest[0]["data"] == {"reason": "user"}
    assert (await alice.http("GET", f"/api/runs/{ack['run_id']}"))[1]["status"] == "cancelled"


async def decide(user: User, run_id: str, call_id: str, **fields: Any) -> tuple[int, Any]:
    return await user.http("POST", f"/api/runs/{run_id}/approvals",
                           json={"tool_call_id": call_id, "approve": True, **fields})


async def test_a_thread_grant_answers_in_its_thread_only_and_revoking_it_asks_again(server: Server) -> None:
    alice = await register(server)
    async with alice.connect() as ws:
        await until_ready(ws)
        ack, asked = await ask_to_forget(ws)
        thread_id = ack["thread_id"]
        call_id = asked["data"]["tool_call_id"]
        assert (await decide(alice, ack["run_id"], call_id, remember="thread"))[0] == 202
        await to_the_end(ws, ack["run_id"])
        # The same thread: the grant answers.
        _, frames = await chat(ws, FORGET, thread_id=thread_id)
        assert "approval_required" not in kinds(frames)
        decided = next(f for f in frames if f["type"] == "approval_decided")
        assert decided["data"]["by"] == "grant" and decided["data"]["approved"] is True
        assert frames[-1]["type"] == "agent_completed"
        # Another thread: it asks.
        other, _ = await ask_to_forget(ws)
        await ws.send(json.dumps({"type": "cancel", "run_id": other["run_id"]}))
        await to_the_end(ws, other["run_id"])
        status, body = await alice.http("GET", "/api/approvals/grants")
        assert status == 200 and len(body["grants"]) == 1
        grant = body["grants"][0]
        assert (grant["tool"], grant["scope"], grant["thread_id"]) == ("delete_notes", "thread", thread_id)
        assert (await alice.http("DELETE", f"/api/approvals/grants/{grant['grant_id']}"))[0] == 204
        assert (await alice.http("DELETE", f"/api/approvals/grants/{grant['grant_id']}"))[0] == 404
        again, _ = await ask_to_forget(ws, thread_id=thread_id)
        assert again["thread_id"] == thread_id


async def test_an_always_grant_answers_everywhere_and_is_the_users_own(server: Server) -> None:
    alice, bob = await register(server), await register(server)
    async with alice.connect() as ws:
        await until_ready(ws)
        ack, asked = await ask_to_forget(ws)
        call_id = asked["data"]["tool_call_id"]
        assert (await decide(alice, ack["run_id"], call_id, remember="always"))[0] == 202
        await to_the_end(ws, ack["run_id"])
        _, frames = await chat(ws, FORGET)  # a new thread
        assert "approval_required" not in kinds(frames)
        assert next(f for f in frames if f["type"] == "approval_decided")["data"]["by"] == "grant"
    status, grants = await alice.http("GET", "/api/approvals/grants")
    assert [g["scope"] for g in grants["grants"]] == ["always"]
    # Bob neither sees nor revokes Alice's grant, and is asked himself.
    assert (await bob.http("GET", "/api/approvals/grants"))[1] == {"grants": []}
    grant_id = grants["grants"][0]["grant_id"]
    status, body = await bob.http("DELETE", f"/api/approvals/grants/{grant_id}")
    assert status == 404 and body["error"]["code"] == "not_found"
    async with bob.connect() as ws:
        await until_ready(ws)
        await ask_to_forget(ws)


async def test_the_decision_comes_on_another_socket_and_after_a_reconnect(server: Server) -> None:
    alice = await register(server)
    async with alice.connect() as first:
        await until_ready(first)
        ack, asked = await ask_to_forget(first)
        cursor = asked["cursor"]
    # The first socket is gone; a second one resumes from its cursor and decides.
    async with alice.connect() as second:
        await until_ready(second)
        await second.send(json.dumps({"type": "resume", "cursor": cursor}))
        await second.send(json.dumps({"type": "approval", "run_id": ack["run_id"],
                                      "tool_call_id": asked["data"]["tool_call_id"], "approve": True}))
        rest = await to_the_end(second, ack["run_id"])
    assert rest[0]["type"] == "approval_decided" and rest[-1]["type"] == "agent_completed"


async def test_another_users_run_or_call_is_not_found(server: Server) -> None:
    alice, mallory = await register(server), await register(server)
    async with alice.connect() as ws:
        await until_ready(ws)
        ack, asked = await ask_to_forget(ws)
        call_id = asked["data"]["tool_call_id"]
        status, body = await decide(mallory, ack["run_id"], call_id)
        assert status == 404 and body["error"]["code"] == "not_found"
        async with mallory.connect() as hostile:
            await until_ready(hostile)
            await hostile.send(json.dumps({"type": "approval", "run_id": ack["run_id"],
                                           "tool_call_id": call_id, "approve": True}))
            error = await next_of(hostile, {"error"})
            assert error["code"] == "not_found"
        # Alice's run still waits, undecided.
        status, run = await alice.http("GET", f"/api/runs/{ack['run_id']}")
        assert run["status"] == "waiting"
        await ws.send(json.dumps({"type": "approval", "run_id": ack["run_id"], "tool_call_id": "call_x",
                                  "approve": True}))
        assert (await next_of(ws, {"error"}))["code"] == "not_found"


async def test_a_second_message_queues_behind_a_waiting_run_rejects_or_interrupts(server: Server) -> None:
    alice = await register(server)
    async with alice.connect() as ws:
        await until_ready(ws)
        ack, asked = await ask_to_forget(ws)
        thread_id = ack["thread_id"]
        # reject: the thread is busy while its run waits.
        await ws.send(json.dumps({"type": "chat", "message": "2 + 2", "thread_id": thread_id,
                                  "multitask": "reject"}))
        assert (await next_of(ws, {"error"}))["code"] == "thread_busy"
        # enqueue: it waits for the waiting run, then answers after it.
        await ws.send(json.dumps({"type": "chat", "message": "What is 2 + 2?", "thread_id": thread_id}))
        queued = await next_of(ws, {"ack"})
        assert (await alice.http("GET", f"/api/runs/{queued['run_id']}"))[1]["status"] == "queued"
        await ws.send(json.dumps({"type": "approval", "run_id": ack["run_id"],
                                  "tool_call_id": asked["data"]["tool_call_id"], "approve": True}))
        frames: list[Frame] = []
        await read_until(ws, lambda f: f.get("run_id") == queued["run_id"] and f["type"] == "agent_completed",
                         frames, timeout=20)
        ends = [(f["run_id"], f["type"]) for f in frames if f["type"] in {"agent_completed", "agent_started"}]
        assert ends == [(ack["run_id"], "agent_completed"), (queued["run_id"], "agent_started"),
                        (queued["run_id"], "agent_completed")]
        # interrupt: the waiting run ends, the new one runs.
        waiting, _ = await ask_to_forget(ws, thread_id=thread_id)
        await ws.send(json.dumps({"type": "chat", "message": "What is 3 + 3?", "thread_id": thread_id,
                                  "multitask": "interrupt"}))
        frames = []
        newer = await read_until(ws, lambda f: f["type"] == "ack", frames)
        await read_until(ws, lambda f: f.get("run_id") == newer["run_id"] and f["type"] == "agent_completed",
                         frames, timeout=20)
        cancelled = [f for f in frames if f.get("run_id") == waiting["run_id"]]
        assert kinds(cancelled) == ["agent_cancelled"] and cancelled[0]["data"]["reason"] == "interrupted"


async def test_a_hundred_users_wait_with_no_engine_and_each_decides_only_their_own(server: Server) -> None:
    users = await asyncio.gather(*(register(server) for _ in range(100)))
    waiting: list[tuple[User, str, str]] = []

    async def ask(user: User) -> None:
        status, body = await user.http("POST", "/api/chat/message", json={"message": FORGET, "wait": True})
        assert status == 200 and body["status"] == "waiting", body
        asked = next(e for e in body["events"] if e["type"] == "approval_required")
        waiting.append((user, body["run_id"], asked["data"]["tool_call_id"]))

    await asyncio.gather(*(ask(user) for user in users))
    assert await engines_active(server) == 0
    assert (await server.container.run_registry()).active == 0
    # Each tries the next user's run first (not found), then decides their own.
    for index, (user, _, _) in enumerate(waiting):
        _, other_run, other_call = waiting[(index + 1) % len(waiting)]
        status, body = await decide(user, other_run, other_call)
        assert status == 404 and body["error"]["code"] == "not_found"
    results = await asyncio.gather(*(decide(user, run_id, call_id) for user, run_id, call_id in waiting))
    assert all(status == 202 for status, _ in results)
    counted = (await server.container.run_registry()).approvals()
    assert counted["asked"] == 100 and counted["approved"] == 100

    async def ended(user: User, run_id: str) -> bool:
        return (await user.http("GET", f"/api/runs/{run_id}"))[1]["status"] == "completed"

    for user, run_id, _ in waiting:
        await eventually(lambda u=user, r=run_id: ended(u, r), what=f"run {run_id} completed", timeout=60)

    async def all_cleaned_up() -> bool:  # a run's status is stored before its engine is cleaned up
        return await engines_active(server) == 0

    await eventually(all_cleaned_up, what="every engine cleaned up")


async def test_a_decision_frame_that_is_malformed_is_an_error_and_the_socket_stays(server: Server) -> None:
    alice = await register(server)
    async with alice.connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "approval", "run_id": "run_1", "tool_call_id": "c",
                                  "approve": "yes"}))
        assert (await next_of(ws, {"error"}))["code"] == "invalid_message"
        await ws.send(json.dumps({"type": "approval", "run_id": "run_1", "tool_call_id": "c", "approve": True,
                                  "remember": "forever"}))
        assert (await next_of(ws, {"error"}))["code"] == "invalid_message"
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv(ws))["type"] == "pong"
