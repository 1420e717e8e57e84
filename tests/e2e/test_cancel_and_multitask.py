"""Stop means stop; double-texting does what the client chose; a retry never starts a second run."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

from domain.context import UserExecutionContext
from domain.tools.calculator import Calculator
from tests.e2e.client import (
    TERMINAL,
    Server,
    register,
    run_events,
    start_chat,
    until_ready,
    until_runs_end,
    until_type,
)
from tests.overrides import replace_calculator

STORY = "tell me a story"


class SlowCalculator(Calculator):
    """The real calculator, three seconds late: long enough to press stop mid-tool."""

    async def __call__(self, context: UserExecutionContext, arguments: Mapping[str, Any], *,
                       call_key: str) -> Any:
        await asyncio.sleep(3)
        return await super().__call__(context, arguments)


async def test_cancel_mid_tool_stops_within_a_second(make_server) -> None:
    server: Server = await make_server(replace_calculator(SlowCalculator()))
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        ack = await start_chat(ws, "What is 17 * 23?")
        await until_type(ws, "tool_executing")
        pressed = time.monotonic()
        await ws.send(json.dumps({"type": "cancel", "run_id": ack["run_id"]}))
        rest = await run_events(ws, ack["run_id"])
        assert time.monotonic() - pressed < 1.0
        assert rest[-1]["type"] == "agent_cancelled" and rest[-1]["data"] == {"reason": "user"}
        assert "agent_completed" not in [f["type"] for f in rest]
    _status, run = await user.http("GET", f"/api/runs/{ack['run_id']}")
    assert run["status"] == "cancelled"


async def test_cancel_mid_stream_over_http_then_the_thread_goes_on(make_server) -> None:
    server: Server = await make_server(model={"builtin_delay_ms": 40})
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        ack = await start_chat(ws, STORY)
        await until_type(ws, "agent_message_delta")
        pressed = time.monotonic()
        status, body = await user.http("POST", f"/api/runs/{ack['run_id']}/cancel")
        assert status == 202 and body["run_id"] == ack["run_id"]
        rest = await run_events(ws, ack["run_id"])
        assert time.monotonic() - pressed < 1.0
        assert rest[-1]["type"] == "agent_cancelled"
        status, again = await user.http("POST", f"/api/runs/{ack['run_id']}/cancel")
        assert status == 202 and again["status"] == "cancelled"  # idempotent
        await ws.send(json.dumps({"type": "chat", "message": "What is 2 + 2?",
                                  "thread_id": ack["thread_id"]}))
        next_ack = (await until_type(ws, "ack"))[-1]
        events = await run_events(ws, next_ack["run_id"])
        assert events[-1]["type"] == "agent_completed" and "4" in events[-1]["data"]["text"]


async def test_cancel_by_client_message_id_sent_before_the_ack(make_server) -> None:
    server: Server = await make_server(model={"builtin_delay_ms": 40})
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "chat", "message": STORY, "client_message_id": "c1"}))
        await ws.send(json.dumps({"type": "cancel", "client_message_id": "c1"}))
        ack = (await until_type(ws, "ack"))[-1]
        events = await run_events(ws, ack["run_id"])
        assert events[-1]["type"] == "agent_cancelled"
        assert "agent_message_delta" not in [e["type"] for e in events][:3]


async def test_enqueue_is_the_default(make_server) -> None:
    server: Server = await make_server(model={"builtin_delay_ms": 10})
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        first = await start_chat(ws, STORY)
        await ws.send(json.dumps({"type": "chat", "message": "What is 2 + 2?",
                                  "thread_id": first["thread_id"]}))
        frames = await until_runs_end(ws, 2)
    second = next(f for f in frames if f["type"] == "ack")
    assert second["status"] == "queued"
    order = [(f.get("run_id"), f["type"]) for f in frames]
    assert order.index((first["run_id"], "agent_completed")) < order.index(
        (second["run_id"], "agent_started"))
    assert [f["type"] for f in frames if f.get("run_id") == second["run_id"]][-1] == "agent_completed"


async def test_reject_answers_thread_busy_and_the_first_run_goes_on(make_server) -> None:
    server: Server = await make_server(model={"builtin_delay_ms": 10})
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        first = await start_chat(ws, STORY)
        await ws.send(json.dumps({"type": "chat", "message": "hi", "thread_id": first["thread_id"],
                                  "multitask": "reject", "client_message_id": "r1"}))
        frames = await until_type(ws, "error")
        assert frames[-1]["code"] == "thread_busy" and frames[-1]["client_message_id"] == "r1"
        rest = frames + await run_events(ws, first["run_id"])
        assert [f for f in rest if f.get("run_id") == first["run_id"]][-1]["type"] == "agent_completed"


async def test_interrupt_cancels_the_running_one_and_starts_the_new(make_server) -> None:
    server: Server = await make_server(model={"builtin_delay_ms": 30})
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        first = await start_chat(ws, STORY)
        await until_type(ws, "agent_message_delta")
        await ws.send(json.dumps({"type": "chat", "message": "What is 2 + 2?",
                                  "thread_id": first["thread_id"], "multitask": "interrupt"}))
        frames = await until_runs_end(ws, 2)
    ends = {f["run_id"]: f for f in frames if f["type"] in TERMINAL}
    assert ends[first["run_id"]]["type"] == "agent_cancelled"
    assert ends[first["run_id"]]["data"] == {"reason": "interrupted"}
    second = next(f for f in frames if f["type"] == "ack")
    assert ends[second["run_id"]]["type"] == "agent_completed"


async def test_a_retried_client_message_id_starts_one_run(make_server) -> None:
    server: Server = await make_server(model={"builtin_delay_ms": 10})
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        first = await start_chat(ws, STORY, client_message_id="same")
    async with user.connect() as ws:  # the retry after a reconnect
        await until_ready(ws)
        second = await start_chat(ws, STORY, client_message_id="same")
        assert second["run_id"] == first["run_id"]
    _, threads = await user.http("GET", "/api/threads")
    _status, history = await user.http("GET", f"/api/threads/{first['thread_id']}/messages")
    assert len(threads["threads"]) == 1
    assert [m["role"] for m in history["messages"]].count("user") == 1


async def test_a_cancel_never_leaves_a_gap_on_a_live_socket(make_server) -> None:
    """A stop that lands while an event is being stored must not drop that event from the socket."""
    server: Server = await make_server(model={"builtin_delay_ms": 0},
                                       limits={"max_pending_runs_per_user": 64})
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        for _ in range(30):
            ack = await start_chat(ws, STORY)
            frames = [f for f in await until_type(ws, "agent_thinking") if f.get("run_id") == ack["run_id"]]
            await ws.send(json.dumps({"type": "cancel", "run_id": ack["run_id"]}))
            frames += await run_events(ws, ack["run_id"])
            seqs = [f["seq"] for f in frames]
            assert seqs == list(range(1, len(seqs) + 1)), seqs
