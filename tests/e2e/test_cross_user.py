"""Another user's ids, on every route and frame that takes one: not found, never 403, never their data.

User B has a finished thread (a note with a secret word, recalled) and a run that is still going
(its model waits on a gate the test opens at the end). User A then uses B's real ids, one case per
id-taking route or frame field. Each case checks A's answer (404 `not_found` over HTTP, an `error`
frame with code `not_found` over WebSocket, or, where the protocol says so, a new object of A's
own), and afterwards that B's objects are untouched: B's live run was still running and then
completed (never cancelled or interrupted), B's thread lists the same messages, B has the same
threads, and no frame of A's carried B's secret or ids (nor B's of A's).

The last test walks the app's router: every route with a path parameter, plus the two routes that
take an id in their body, must have a case here, and every case must name a route that exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from adapters.models.builtin import BuiltinChatModel
from adapters.persistence.grants import add_grant
from domain.entities import ApprovalGrant, McpServer
from tests.e2e.client import TERMINAL, Server, User, register, until_ready
from tests.helpers import eventually
from tests.overrides import replace_model

SECRET = f"Wombat{secrets.token_hex(5)}"
HOLD = "HOLD-THIS-RUN"
FINAL = {"completed", "failed", "cancelled"}
TIMEOUT_S = 15.0


class GatedModel:
    """The builtin model, except that a message with HOLD in it waits for the gate before answering."""

    name = "builtin"

    def __init__(self, gate: asyncio.Event) -> None:
        self._inner = BuiltinChatModel()
        self._gate = gate

    async def stream(self, request: Any) -> AsyncIterator[Any]:
        last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        if HOLD in str(last):
            await self._gate.wait()
        async for chunk in self._inner.stream(request):
            yield chunk


@dataclass
class Scene:
    server: Server
    a: User
    b: User
    gate: asyncio.Event
    a_ws: Any = None  # A's socket, open all along: it gets every event of A's runs
    a_frames: list[dict[str, Any]] = field(default_factory=list)
    b_frames: list[dict[str, Any]] = field(default_factory=list)
    done_thread: str = ""
    done_runs: list[str] = field(default_factory=list)
    done_cmid: str = ""
    live_thread: str = ""
    live_run: str = ""
    live_cmid: str = ""
    b_first_cursor: str = ""
    b_messages: list[dict[str, Any]] = field(default_factory=list)
    b_threads: set[str] = field(default_factory=set)

    @property
    def b_ids(self) -> set[str]:
        return {self.done_thread, self.live_thread, self.live_run, *self.done_runs}

    def assert_nothing_of_b(self, text: str, *, allowed: str | None = None) -> None:
        """`text` (an answer to A) holds no secret and no id of B's but the one A sent itself."""
        assert SECRET not in text, f"B's secret reached A: {text[:500]}"
        for b_id in self.b_ids - {allowed}:
            assert b_id not in text, f"B's id {b_id} reached A: {text[:500]}"


# -- helpers -----------------------------------------------------------------------------------------


async def collect(ws: Any, frames: list[dict[str, Any]]) -> None:
    with contextlib.suppress(Exception):
        async for raw in ws:
            frames.append(json.loads(raw))


async def wait_for(frames: list[dict[str, Any]], done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first frame the background reader collected into `frames` that satisfies `done`."""
    return await eventually(lambda: next((f for f in frames if done(f)), None), TIMEOUT_S,
                            what="a matching frame from the background reader", interval=0.01)


async def request(user: User, method: str, path: str, **kwargs: Any) -> tuple[int, str, str]:
    """(status, content type, body text): bodies are checked as text, whatever they are."""
    headers = {**user.auth, **kwargs.pop("headers", {})}
    async with aiohttp.ClientSession() as session, session.request(
            method, user.server.base_url + path, headers=headers,
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S), **kwargs) as response:
        return response.status, response.content_type, await response.text()


async def expect_404(s: Scene, method: str, path: str, used: str, **kwargs: Any) -> None:
    status, content_type, text = await request(s.a, method, path, **kwargs)
    assert status == 404, f"{method} {path} with B's id answered {status}: {text[:300]}"
    assert content_type == "application/json", content_type
    error = json.loads(text)["error"]
    assert error["code"] == "not_found" and error["message"].strip(), error
    s.assert_nothing_of_b(text, allowed=used)


async def ws_exchange(s: Scene, *frames: dict[str, Any]) -> list[dict[str, Any]]:
    """Every frame A's new socket gets for `frames`, up to the pong of a ping sent after them."""
    async with s.a.connect() as ws:
        await until_ready(ws)
        for frame in frames:
            await ws.send(json.dumps(frame))
        await ws.send(json.dumps({"type": "ping"}))
        got = []
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "pong":
                    return got
                got.append(frame)


def errors_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "error"]


async def expect_ws_not_found(s: Scene, frame: dict[str, Any], used: str) -> None:
    got = await ws_exchange(s, frame)
    errors = errors_of(got)
    assert len(errors) == 1 and errors[0]["code"] == "not_found", f"{frame} answered {got}"
    assert errors[0]["message"].strip()
    assert not [f for f in got if "seq" in f or f["type"] == "ack"], f"{frame} answered {got}"
    s.assert_nothing_of_b(json.dumps(got), allowed=used)


async def expect_new_run_of_a(s: Scene, run_id: str, thread_id: str) -> None:
    assert run_id not in s.b_ids and thread_id not in s.b_ids, (run_id, thread_id)
    status, body = await s.a.http("GET", f"/api/runs/{run_id}")
    assert status == 200 and body["thread_id"] == thread_id, body
    status, body = await s.a.http("GET", f"/api/threads/{thread_id}/messages")
    assert status == 200, body
    s.assert_nothing_of_b(json.dumps(body))
    assert len([m for m in body["messages"] if m["role"] == "user"]) == 1, f"not a new thread: {body}"


def agui_input(thread_id: str, run_id: str, text: str = "What is my vault code?") -> dict[str, Any]:
    return {"threadId": thread_id, "runId": run_id, "state": {}, "tools": [], "context": [],
            "forwardedProps": {},
            "messages": [{"id": f"m_{secrets.token_hex(4)}", "role": "user", "content": text}]}


async def agui(s: Scene, body: dict[str, Any]) -> list[dict[str, Any]]:
    status, content_type, text = await request(s.a, "POST", "/api/agui", json=body)
    assert status == 200 and content_type == "text/event-stream", (status, text[:300])
    s.assert_nothing_of_b(text)
    return [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]


def agui_started_and_finished(events: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    assert events and events[0]["type"] == "RUN_STARTED", events[:2]
    assert events[-1]["type"] == "RUN_FINISHED", events[-1]
    return events[0], events[-1]


# -- the cases -----------------------------------------------------------------------------------------


async def get_run(s: Scene) -> None:
    await expect_404(s, "GET", f"/api/runs/{s.done_runs[0]}", s.done_runs[0])
    await expect_404(s, "GET", f"/api/runs/{s.live_run}", s.live_run)


async def run_events(s: Scene) -> None:
    await expect_404(s, "GET", f"/api/runs/{s.done_runs[0]}/events", s.done_runs[0])
    await expect_404(s, "GET", f"/api/runs/{s.live_run}/events", s.live_run, headers={"Last-Event-ID": "0"})


async def cancel_run(s: Scene) -> None:
    await expect_404(s, "POST", f"/api/runs/{s.live_run}/cancel", s.live_run)
    await expect_404(s, "POST", f"/api/runs/{s.done_runs[0]}/cancel", s.done_runs[0])


async def thread_messages(s: Scene) -> None:
    await expect_404(s, "GET", f"/api/threads/{s.done_thread}/messages", s.done_thread)
    await expect_404(s, "GET", f"/api/threads/{s.live_thread}/messages", s.live_thread)


async def delete_thread(s: Scene) -> None:
    await expect_404(s, "DELETE", f"/api/threads/{s.done_thread}", s.done_thread)


async def delete_busy_thread(s: Scene) -> None:
    """B's thread with a run going: 404, not 409 (a 409 would tell A that it exists)."""
    await expect_404(s, "DELETE", f"/api/threads/{s.live_thread}", s.live_thread)


async def chat_message_thread(s: Scene) -> None:
    body = {"message": "What is my vault code?", "thread_id": s.done_thread}
    await expect_404(s, "POST", "/api/chat/message", s.done_thread, json=body)
    await expect_404(s, "POST", "/api/chat/message", s.done_thread, json={**body, "wait": True})
    await expect_404(s, "POST", "/api/chat/message", s.live_thread,
                     json={**body, "thread_id": s.live_thread, "multitask": "interrupt"})


async def chat_message_cmid(s: Scene) -> None:
    """B's client_message_id names no run of A's: A gets a run of its own, not B's."""
    status, _, text = await request(s.a, "POST", "/api/chat/message",
                                               json={"message": "hello", "client_message_id": s.live_cmid})
    assert status == 202, text
    s.assert_nothing_of_b(text)
    body = json.loads(text)
    await expect_new_run_of_a(s, body["run_id"], body["thread_id"])


async def agui_thread(s: Scene) -> None:
    """threadId of B's: a new thread of A's, without B's history (the question's answer is empty)."""
    for thread_id in (s.done_thread, s.live_thread):
        events = await agui(s, agui_input(thread_id, f"client-run-{secrets.token_hex(4)}"))
        started, finished = agui_started_and_finished(events)
        ours = started["metadata"]["goldenpath"]
        assert ours["newThread"] is True and started["threadId"] != thread_id, started
        assert finished["threadId"] == started["threadId"], finished
        assert SECRET not in json.dumps(events)
        await expect_new_run_of_a(s, ours["runId"], started["threadId"])


async def agui_run_id(s: Scene) -> None:
    """runId is the client_message_id: B's names no run of A's, so A gets a new run."""
    events = await agui(s, agui_input("", s.done_cmid, "What is 17 * 23?"))
    started, finished = agui_started_and_finished(events)
    ours = started["metadata"]["goldenpath"]
    assert "391" in finished["result"]["text"], finished
    await expect_new_run_of_a(s, ours["runId"], started["threadId"])


async def ws_chat_thread(s: Scene) -> None:
    await expect_ws_not_found(s, {"type": "chat", "message": "What is my vault code?",
                                  "thread_id": s.done_thread}, s.done_thread)
    await expect_ws_not_found(s, {"type": "chat", "message": "stop that", "thread_id": s.live_thread,
                                  "multitask": "interrupt"}, s.live_thread)
    await expect_ws_not_found(s, {"type": "chat", "message": "hi", "thread_id": s.live_thread,
                                  "multitask": "reject"}, s.live_thread)


async def ws_chat_cmid(s: Scene) -> None:
    got = await ws_exchange(s, {"type": "chat", "message": "hello", "client_message_id": s.live_cmid})
    acks = [f for f in got if f["type"] == "ack"]
    assert len(acks) == 1 and not errors_of(got), got
    assert acks[0]["client_message_id"] == s.live_cmid
    s.assert_nothing_of_b(json.dumps(got))
    await expect_new_run_of_a(s, acks[0]["run_id"], acks[0]["thread_id"])


async def ws_cancel_run(s: Scene) -> None:
    await expect_ws_not_found(s, {"type": "cancel", "run_id": s.live_run}, s.live_run)
    await expect_ws_not_found(s, {"type": "cancel", "run_id": s.done_runs[0]}, s.done_runs[0])


async def ws_cancel_cmid(s: Scene) -> None:
    await expect_ws_not_found(s, {"type": "cancel", "client_message_id": s.live_cmid}, s.live_cmid)
    await expect_ws_not_found(s, {"type": "cancel", "client_message_id": s.done_cmid}, s.done_cmid)


async def ws_resume_run(s: Scene) -> None:
    await expect_ws_not_found(s, {"type": "resume", "run_id": s.done_runs[0], "after_seq": 0}, s.done_runs[0])
    await expect_ws_not_found(s, {"type": "resume", "run_id": s.live_run, "after_seq": 0}, s.live_run)


async def decide_approval(s: Scene) -> None:
    """Deciding on B's runs (going or done), with any call id: not found, and nothing moves."""
    for run_id in (s.live_run, *s.done_runs):
        await expect_404(s, "POST", f"/api/runs/{run_id}/approvals", run_id,
                         json={"tool_call_id": "call_1", "approve": True, "remember": "always"})
    assert (await s.a.http("GET", "/api/approvals/grants"))[1] == {"grants": []}


async def revoke_grant(s: Scene) -> None:
    """B's grant: A cannot revoke it (404), and B still has it."""
    b_grant = ApprovalGrant(id=f"grant_{secrets.token_hex(4)}", user_id=s.b.user_id, tool="delete_notes",
                            created_at=datetime.now(UTC), thread_id=s.done_thread)
    database = await s.server.container.database()
    await database.write(lambda conn: add_grant(conn, b_grant))
    await expect_404(s, "DELETE", f"/api/approvals/grants/{b_grant.id}", b_grant.id)
    status, body = await s.b.http("GET", "/api/approvals/grants")
    assert status == 200 and [g["grant_id"] for g in body["grants"]] == [b_grant.id], body


async def remove_mcp_server(s: Scene) -> None:
    """B's MCP server: A cannot remove it (404) nor see it or its tools; B still has it."""
    repository = await s.server.container.mcp_server_repository()
    await repository.add(McpServer(user_id=s.b.user_id, name="b-vault", url="http://127.0.0.1:9/mcp",
                                   created_at=datetime.now(UTC),
                                   headers={"Authorization": f"Bearer {SECRET}"}))
    await expect_404(s, "DELETE", "/api/mcp/servers/b-vault", "b-vault")
    status, body = await s.a.http("GET", "/api/mcp/servers")
    assert status == 200 and body == {"servers": []}, body
    status, body = await s.a.http("GET", "/api/tools")
    assert status == 200 and "b-vault" not in json.dumps(body), body
    s.assert_nothing_of_b(json.dumps(body))
    status, body = await s.b.http("GET", "/api/mcp/servers")
    assert [server["name"] for server in body["servers"]] == ["b-vault"], body
    assert SECRET not in json.dumps(body)  # a header's value is never shown, not even to its owner


async def rename_thread(s: Scene) -> None:
    for thread_id in (s.done_thread, s.live_thread):
        await expect_404(s, "PATCH", f"/api/threads/{thread_id}", thread_id, json={"title": "taken over"})


async def fork_thread(s: Scene) -> None:
    message_id = s.b_messages[0]["message_id"]
    await expect_404(s, "POST", f"/api/threads/{s.done_thread}/fork", s.done_thread,
                     json={"message_id": message_id})
    status, body = await s.a.http("GET", "/api/threads")
    assert status == 200 and body["threads"] == [], body  # no fork of B's history became A's


async def thread_timeline(s: Scene) -> None:
    for thread_id in (s.done_thread, s.live_thread):
        await expect_404(s, "GET", f"/api/threads/{thread_id}/timeline", thread_id)


async def ws_approval_run(s: Scene) -> None:
    for run_id in (s.live_run, s.done_runs[0]):
        await expect_ws_not_found(s, {"type": "approval", "run_id": run_id, "tool_call_id": "call_1",
                                      "approve": False}, run_id)


async def ws_resume_cursor(s: Scene) -> None:
    """B's cursor is only a position: A gets A's own events after it (all of them here), none of B's."""
    async with s.a.connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "chat", "message": "What is 17 * 23?"}))
        own = []
        async with asyncio.timeout(TIMEOUT_S):
            while not own or own[-1]["type"] not in TERMINAL:
                own.append(json.loads(await ws.recv()))
    run_id = own[0]["run_id"]
    got = await ws_exchange(s, {"type": "resume", "cursor": s.b_first_cursor})
    assert not errors_of(got), got
    assert {f.get("run_id") for f in got} == {run_id}, f"resume from B's cursor gave {got}"
    assert [f["seq"] for f in got] == [f["seq"] for f in own if "seq" in f], "not every own event"
    s.assert_nothing_of_b(json.dumps(got), allowed=s.b_first_cursor)


@dataclass(frozen=True)
class Case:
    name: str
    route: tuple[str, str]  # (HTTP method, route path) or ("WS", "<frame type>.<field>")
    act: Callable[[Scene], Awaitable[None]]


CASES = [
    Case("get run", ("GET", "/api/runs/{run_id}"), get_run),
    Case("run events (SSE)", ("GET", "/api/runs/{run_id}/events"), run_events),
    Case("cancel run", ("POST", "/api/runs/{run_id}/cancel"), cancel_run),
    Case("thread messages", ("GET", "/api/threads/{thread_id}/messages"), thread_messages),
    Case("delete thread", ("DELETE", "/api/threads/{thread_id}"), delete_thread),
    Case("delete busy thread", ("DELETE", "/api/threads/{thread_id}"), delete_busy_thread),
    Case("chat message thread_id", ("POST", "/api/chat/message"), chat_message_thread),
    Case("chat message client_message_id", ("POST", "/api/chat/message"), chat_message_cmid),
    Case("agui threadId", ("POST", "/api/agui"), agui_thread),
    Case("agui runId", ("POST", "/api/agui"), agui_run_id),
    Case("ws chat thread_id", ("WS", "chat.thread_id"), ws_chat_thread),
    Case("ws chat client_message_id", ("WS", "chat.client_message_id"), ws_chat_cmid),
    Case("ws cancel run_id", ("WS", "cancel.run_id"), ws_cancel_run),
    Case("ws cancel client_message_id", ("WS", "cancel.client_message_id"), ws_cancel_cmid),
    Case("ws resume run_id", ("WS", "resume.run_id"), ws_resume_run),
    Case("ws resume cursor", ("WS", "resume.cursor"), ws_resume_cursor),
    Case("decide approval", ("POST", "/api/runs/{run_id}/approvals"), decide_approval),
    Case("revoke grant", ("DELETE", "/api/approvals/grants/{grant_id}"), revoke_grant),
    Case("ws approval run_id", ("WS", "approval.run_id"), ws_approval_run),
    Case("remove MCP server", ("DELETE", "/api/mcp/servers/{name}"), remove_mcp_server),
    Case("rename thread", ("PATCH", "/api/threads/{thread_id}"), rename_thread),
    Case("fork thread", ("POST", "/api/threads/{thread_id}/fork"), fork_thread),
    Case("thread timeline", ("GET", "/api/threads/{thread_id}/timeline"), thread_timeline),
]
# Routes that take an id in their body rather than their path.
BODY_ID_ROUTES = {("POST", "/api/chat/message"), ("POST", "/api/agui")}
# Every id-taking field of a client frame (PROTOCOL.md, "Client frames").
WS_ID_FIELDS = {("WS", "chat.thread_id"), ("WS", "chat.client_message_id"), ("WS", "cancel.run_id"),
                ("WS", "cancel.client_message_id"), ("WS", "resume.run_id"), ("WS", "resume.cursor"),
                ("WS", "approval.run_id")}


# -- the scene: B's objects, and the checks that they are untouched ----------------------------------------


async def b_chat(s: Scene, ws: Any, message: str, cmid: str, **fields: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "chat", "message": message, "client_message_id": cmid, **fields}))
    return await wait_for(s.b_frames, lambda f: f["type"] == "ack" and f["client_message_id"] == cmid)


async def b_finished(s: Scene, run_id: str) -> dict[str, Any]:
    return await wait_for(s.b_frames, lambda f: f.get("run_id") == run_id and f["type"] in TERMINAL)


@pytest.fixture
async def scene(make_server: Any) -> AsyncIterator[Scene]:
    gate = asyncio.Event()
    server = await make_server(override=replace_model(GatedModel(gate)),
                               security={"messages_per_minute": 10_000})
    s = Scene(server=server, a=await register(server), b=await register(server), gate=gate)
    async with contextlib.AsyncExitStack() as stack:
        b_ws = await stack.enter_async_context(s.b.connect())
        await until_ready(b_ws)
        tasks = [asyncio.create_task(collect(b_ws, s.b_frames))]
        first = await b_chat(s, b_ws, f"Remember that my vault code is {SECRET}", "b-done-1")
        s.done_thread, s.done_cmid = first["thread_id"], "b-done-1"
        assert (await b_finished(s, first["run_id"]))["type"] == "agent_completed"
        second = await b_chat(s, b_ws, "What is my vault code?", "b-done-2", thread_id=s.done_thread)
        recalled = await b_finished(s, second["run_id"])
        assert recalled["type"] == "agent_completed" and SECRET in recalled["data"]["text"], recalled
        s.done_runs = [first["run_id"], second["run_id"]]
        s.b_first_cursor = next(f["cursor"] for f in s.b_frames if "cursor" in f)

        s.live_cmid = "b-live"
        live = await b_chat(s, b_ws, f"{HOLD}: tell me about {SECRET}", s.live_cmid)
        s.live_thread, s.live_run = live["thread_id"], live["run_id"]
        await wait_for(s.b_frames, lambda f: f.get("run_id") == s.live_run and f["type"] == "agent_started")

        status, body = await s.b.http("GET", f"/api/threads/{s.done_thread}/messages")
        assert status == 200 and SECRET in json.dumps(body), body
        s.b_messages = body["messages"]
        status, body = await s.b.http("GET", "/api/threads")
        s.b_threads = {t["thread_id"] for t in body["threads"]}

        s.a_ws = await stack.enter_async_context(s.a.connect())
        await until_ready(s.a_ws)
        tasks.append(asyncio.create_task(collect(s.a_ws, s.a_frames)))
        try:
            yield s
        finally:
            gate.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def assert_b_untouched(s: Scene) -> None:
    status, body = await s.b.http("GET", f"/api/runs/{s.live_run}")
    assert status == 200 and body["status"] == "running", f"B's live run was touched: {body}"
    s.gate.set()
    terminal = await b_finished(s, s.live_run)
    assert terminal["type"] == "agent_completed", f"B's live run ended {terminal}"
    status, body = await s.b.http("GET", f"/api/threads/{s.done_thread}/messages")
    assert status == 200 and body["messages"] == s.b_messages, body
    status, body = await s.b.http("GET", "/api/threads")
    assert status == 200 and {t["thread_id"] for t in body["threads"]} == s.b_threads, body
    for run_id in [*s.done_runs, s.live_run]:
        status, body = await s.b.http("GET", f"/api/runs/{run_id}")
        assert status == 200 and body["status"] == "completed", body
    b_runs = {*s.done_runs, s.live_run}
    foreign = [f for f in s.b_frames if "run_id" in f and f["run_id"] not in b_runs]
    assert not foreign, f"A's frames on B's socket: {foreign}"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_a_with_bs_ids_gets_not_found_and_b_is_untouched(scene: Scene, case: Case) -> None:
    await case.act(scene)
    await assert_b_untouched(scene)
    await scene.a_ws.send(json.dumps({"type": "ping"}))  # B's live run has ended: all its events are out
    await wait_for(scene.a_frames, lambda f: f["type"] == "pong")
    scene.assert_nothing_of_b(json.dumps(scene.a_frames))
    status, body = await scene.a.http("GET", "/api/threads")
    assert status == 200
    scene.assert_nothing_of_b(json.dumps(body))


async def test_the_cases_cover_every_id_taking_route(make_server: Any) -> None:
    server = await make_server()
    routes = set()
    for resource in server.app.router.resources():
        for route in resource:
            if route.method == "HEAD":  # aiohttp's automatic HEAD beside each GET: the same handler
                continue
            if "{" in resource.canonical or (route.method, resource.canonical) in BODY_ID_ROUTES:
                routes.add((route.method, resource.canonical))
    required = routes | WS_ID_FIELDS
    covered = {case.route for case in CASES}
    assert not required - covered, f"id-taking routes or frame fields without a case: {required - covered}"
    assert not covered - required, f"cases for routes or fields that do not exist: {covered - required}"
