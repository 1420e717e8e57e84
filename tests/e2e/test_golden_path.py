"""The golden path from outside: register, log in, chat over a real WebSocket, read the history."""

from __future__ import annotations

import json

import aiohttp
import websockets

from tests.e2e.client import Server, chat, recv, register, until_ready

CRITICAL = ["agent_started", "agent_thinking", "tool_executing", "tool_completed",
            "agent_message_delta"]


def assert_gapless(events: list[dict]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "agent_started"
    assert sum(e["type"] in {"agent_completed", "agent_error", "agent_cancelled"} for e in events) == 1


async def test_what_is_17_times_23_streams_every_step(server: Server) -> None:
    user = await register(server)
    status, me = await user.http("GET", "/api/me")
    assert status == 200 and me == {"user_id": user.user_id, "username": user.username}

    async with user.connect() as ws:
        ready = await until_ready(ws)
        assert ready["user_id"] == user.user_id and ready["connection_id"]
        ack, events = await chat(ws, "What is 17 * 23?", client_message_id="m1")
        assert ack["client_message_id"] == "m1" and ack["status"] in {"running", "queued"}

        types = [e["type"] for e in events]
        positions = [types.index(t) for t in CRITICAL]
        assert positions == sorted(positions), types
        assert types[-1] == "agent_completed"
        # Pieces that come within runs.delta_window_ms are one delta (this model sends all at once).
        assert types.count("agent_message_delta") >= 1
        assert_gapless(events)
        tool = next(e for e in events if e["type"] == "tool_executing")
        assert tool["data"]["tool"] == "calculator"
        done = next(e for e in events if e["type"] == "tool_completed")
        assert done["data"]["result"]["value"] == 391 and "duration_ms" in done["data"]
        final = events[-1]
        assert "391" in final["data"]["text"]
        deltas = "".join(e["data"]["delta"] for e in events if e["type"] == "agent_message_delta")
        assert deltas == final["data"]["text"]
        assert final["data"]["usage"]["tool_calls"] == 1
        assert all(e["thread_id"] == ack["thread_id"] and e["cursor"] for e in events)
        cursors = [e["cursor"] for e in events]
        assert cursors == sorted(cursors)

        # A follow-up in the same thread
        ack2, events2 = await chat(ws, "Remember that my locker code is 4417",
                                   thread_id=ack["thread_id"])
        assert ack2["thread_id"] == ack["thread_id"] and ack2["run_id"] != ack["run_id"]
        assert_gapless(events2)
        _, events3 = await chat(ws, "What is my locker code?", thread_id=ack["thread_id"])
        assert "4417" in events3[-1]["data"]["text"]

    status, threads = await user.http("GET", "/api/threads")
    assert status == 200 and [t["thread_id"] for t in threads["threads"]] == [ack["thread_id"]]
    status, history = await user.http("GET", f"/api/threads/{ack['thread_id']}/messages")
    assert status == 200
    messages = history["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert messages[0]["text"] == "What is 17 * 23?" and "391" in messages[1]["text"]
    assert messages[1]["message_id"] == final["data"]["message_id"]
    status, run = await user.http("GET", f"/api/runs/{ack['run_id']}")
    assert status == 200 and run["status"] == "completed" and run["finished_at"]


async def test_first_frame_authentication_for_browsers(server: Server) -> None:
    user = await register(server)
    async with websockets.connect(server.ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": user.token}))
        ready = await until_ready(ws)
        assert ready["user_id"] == user.user_id
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv(ws)) == {"type": "pong"}


async def test_chat_over_http_with_wait(server: Server) -> None:
    user = await register(server)
    status, body = await user.http("POST", "/api/chat/message",
                                   json={"message": "What is 17 * 23?", "wait": True})
    assert status == 200, body
    assert body["status"] == "completed" and "391" in body["answer"]
    assert [e["seq"] for e in body["events"]] == list(range(1, len(body["events"]) + 1))
    status, accepted = await user.http("POST", "/api/chat/message",
                                       json={"message": "hello", "thread_id": body["thread_id"]})
    assert status == 202 and accepted["thread_id"] == body["thread_id"]


async def test_events_of_a_run_reach_every_socket_of_its_user(server: Server) -> None:
    user = await register(server)
    async with user.connect() as first, user.connect() as second:
        await until_ready(first)
        await until_ready(second)
        _, events = await chat(first, "What is 2 + 2?")
        seen = []
        while not seen or seen[-1]["type"] != "agent_completed":
            seen.append(await recv(second))
        assert seen == events


async def test_health_and_ready(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(server.base_url + "/health") as response:
            assert response.status == 200 and await response.json() == {"status": "ok"}
        async with session.get(server.base_url + "/ready") as response:
            assert response.status == 200
        async with session.get(server.base_url + "/") as response:
            assert response.status == 200 and "text/html" in response.headers["Content-Type"]


async def test_the_server_pings_idle_sockets(make_server) -> None:
    server = await make_server(server={"ws_heartbeat_s": 0.2})
    user = await register(server)
    async with aiohttp.ClientSession() as session, session.ws_connect(
            server.ws_url, headers=user.auth, autoping=False) as ws:
        assert (await ws.receive_json())["type"] == "ready"
        msg = await ws.receive(timeout=10)  # a wait for the ping, not a bound on it: generous
        assert msg.type is aiohttp.WSMsgType.PING
        await ws.pong(msg.data)


async def test_pieces_are_grouped_within_the_delta_window_and_streamed_one_by_one_without_it(
    make_server,
) -> None:
    question = "Remember that my locker code is 4417"
    answers = {}
    for window_ms in (0.0, 1000.0):
        server = await make_server(runs={"delta_window_ms": window_ms})
        user = await register(server)
        async with user.connect() as ws:
            await until_ready(ws)
            _, events = await chat(ws, question)
        deltas = [e["data"]["delta"] for e in events if e["type"] == "agent_message_delta"]
        assert "".join(deltas) == events[-1]["data"]["text"]
        answers[window_ms] = deltas
    assert len(answers[0.0]) > 1  # each of the model's pieces as it came
    assert answers[1000.0] == ["".join(answers[0.0])]  # one window: one delta
