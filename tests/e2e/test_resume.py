"""Resume: a client that drops mid-run gets exactly what it missed, in order, once."""

from __future__ import annotations

import json

import aiohttp
import pytest
import websockets

from entrypoints.appkeys import services
from tests.e2e.client import TERMINAL, Server, frames_until, recv, register, until_ready
from tests.helpers import eventually

SLOW = {"model": {"builtin_delay_ms": 30}}
STORY = "tell me a story"  # the builtin model's long fallback answer: ~30 deltas


def run_frames(frames: list[dict], run_id: str) -> list[dict]:
    return [f for f in frames if f.get("run_id") == run_id and f["type"] != "ack"]


async def _stored_past(user, run_id: str, seq: int) -> bool:
    return any(event["seq"] > seq for event in await full_run(user, run_id))


async def full_run(user, run_id: str) -> list[dict]:
    status, _body = await user.http("GET", f"/api/runs/{run_id}")
    assert status == 200
    async with aiohttp.ClientSession() as session, session.get(
            user.server.base_url + f"/api/runs/{run_id}/events", headers=user.auth) as response:
        text = await response.text()
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


async def test_resume_by_cursor_mid_run_gets_the_rest_exactly_once(make_server) -> None:
    server: Server = await make_server(**SLOW)
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "chat", "message": STORY}))
        seen = await frames_until(ws, lambda f: f["type"] == "agent_message_delta")
        run_id = seen[0]["run_id"]
    cursor = seen[-1]["cursor"]
    # Events go on while nobody listens: wait until some are stored past the cursor.
    await eventually(lambda: _stored_past(user, run_id, seen[-1]["seq"]),
                     what="events stored while no socket listened")
    async with user.connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "resume", "cursor": cursor}))
        rest = await frames_until(ws, lambda f: f["type"] in TERMINAL)
    got = run_frames(seen, run_id) + run_frames(rest, run_id)
    assert [f["seq"] for f in got] == list(range(1, len(got) + 1))
    assert got == await full_run(user, run_id)


async def test_resume_after_the_run_ended_and_by_run_and_seq(make_server) -> None:
    server: Server = await make_server()
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "chat", "message": "What is 17 * 23?"}))
        first = await frames_until(ws, lambda f: f["type"] == "tool_executing")
        run_id = first[-1]["run_id"]
    async def completed() -> bool:
        return (await user.http("GET", f"/api/runs/{run_id}"))[1]["status"] == "completed"

    await eventually(completed, what="the run completing", interval=0.05)
    everything = await full_run(user, run_id)
    async with user.connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "resume", "run_id": run_id, "after_seq": 3}))
        rest = await frames_until(ws, lambda f: f["type"] in TERMINAL)
        assert rest == everything[3:]
        await ws.send(json.dumps({"type": "resume", "cursor": first[-1]["cursor"]}))
        again = await frames_until(ws, lambda f: f["type"] in TERMINAL)
        assert again == [e for e in everything if e["cursor"] > first[-1]["cursor"]]
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv(ws) == {"type": "pong"}  # nothing else was queued: no duplicates


async def test_resume_during_a_live_run_by_run_then_live_without_duplicates(make_server) -> None:
    server: Server = await make_server(**SLOW)
    user = await register(server)
    async with user.connect() as first:
        await until_ready(first)
        await first.send(json.dumps({"type": "chat", "message": STORY}))
        seen = await frames_until(first, lambda f: f["type"] == "agent_message_delta")
        run_id = seen[-1]["run_id"]
        async with user.connect() as second:
            await until_ready(second)
            await second.send(json.dumps({"type": "resume", "run_id": run_id, "after_seq": 0}))
            on_second = await frames_until(second, lambda f: f["type"] in TERMINAL)
    assert [f["seq"] for f in on_second] == list(range(1, len(on_second) + 1))
    assert on_second == await full_run(user, run_id)


async def test_resume_across_concurrent_runs_of_one_user(make_server) -> None:
    server: Server = await make_server(**SLOW)
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        for _ in range(3):
            await ws.send(json.dumps({"type": "chat", "message": STORY}))
        acks = await frames_until(ws, lambda f: f["type"] == "ack")
        seen = acks + await frames_until(ws, lambda f: f["type"] == "agent_message_delta")
        cursor = [f for f in seen if "cursor" in f][-1]["cursor"]
    async with user.connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "resume", "cursor": cursor}))
        rest: list[dict] = []
        while sum(f["type"] in TERMINAL for f in rest) < 3:
            rest.append(await recv(ws, 20))
    cursors = [f["cursor"] for f in rest]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    assert all(c > cursor for c in cursors)
    for run_id in {f["run_id"] for f in seen if "run_id" in f}:
        got = run_frames(seen, run_id) + run_frames(rest, run_id)
        assert [f["seq"] for f in got] == list(range(1, len(got) + 1))


async def test_expired_and_bad_cursors(make_server) -> None:
    server: Server = await make_server()
    user = await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "chat", "message": "hello"}))
        frames = await frames_until(ws, lambda f: f["type"] in TERMINAL)
        event_log = await server.container.event_log()
        clock = server.container.clock()
        from datetime import timedelta
        await event_log.prune(clock.now() + timedelta(days=1))
        await ws.send(json.dumps({"type": "resume", "cursor": frames[1]["cursor"]}))
        assert await recv(ws) == {"type": "resync", "reason": "cursor_expired"}
        await ws.send(json.dumps({"type": "resume", "cursor": "not-a-cursor"}))
        assert (await recv(ws))["code"] == "invalid_message"
        await ws.send(json.dumps({"type": "resume", "run_id": "run_x", "after_seq": -1}))
        assert (await recv(ws))["code"] == "invalid_message"
        await ws.send(json.dumps({"type": "resume", "run_id": "run_nope"}))
        assert (await recv(ws))["code"] == "not_found"
        await ws.send(json.dumps({"type": "resume"}))
        assert (await recv(ws))["code"] == "invalid_message"
    assert services(server.app).factory.metrics().active == 0


async def test_sse_streams_a_live_run_and_honours_last_event_id(make_server) -> None:
    server: Server = await make_server(**SLOW)
    user = await register(server)
    status, accepted = await user.http("POST", "/api/chat/message", json={"message": STORY})
    assert status == 202
    run_id = accepted["run_id"]
    url = server.base_url + f"/api/runs/{run_id}/events"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=user.auth) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            text = await response.text()
        ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
        assert ids == list(range(1, len(ids) + 1)) and len(ids) > 10
        assert "event: agent_completed" in text
        async with session.get(url, headers={**user.auth, "Last-Event-ID": "5"}) as response:
            later = [int(line[4:]) for line in (await response.text()).splitlines()
                     if line.startswith("id: ")]
        assert later == ids[5:]
        other = await register(server)
        async with session.get(url, headers=other.auth) as response:
            assert response.status == 404
        async with session.get(url, headers={**user.auth, "Last-Event-ID": "x"}) as response:
            assert response.status == 400


async def test_a_shutdown_ends_an_open_event_stream_cleanly(tmp_path) -> None:
    from dependency_injector import providers

    from container import Container
    from tests.conftest import make_settings, start_server

    container = Container()
    container.settings.override(providers.Object(make_settings(
        tmp_path, model={"builtin_delay_ms": 50}, server={"shutdown_grace_s": 0.2})))
    server, runner = await start_server(container)
    user = await register(server)
    status, accepted = await user.http("POST", "/api/chat/message", json={"message": STORY})
    assert status == 202
    async with aiohttp.ClientSession() as session, session.get(
            server.base_url + f"/api/runs/{accepted['run_id']}/events", headers=user.auth) as response:
        await response.content.readline()
        await runner.cleanup()
        text = (await response.content.read()).decode()
    assert "event: agent_cancelled" in text and '"reason":"shutdown"' in text


async def test_shutdown_closes_sockets_and_leaves_other_subscribers_alone(tmp_path) -> None:
    from dependency_injector import providers

    from container import Container
    from tests.conftest import make_settings, start_server
    from tests.fakes import RecordingSocket

    container = Container()
    container.settings.override(providers.Object(make_settings(tmp_path)))
    server, runner = await start_server(container)
    user = await register(server)
    stream = RecordingSocket(user.user_id, "sse_still_open")  # an event stream: no close()
    services(server.app).bridge.register(stream)
    async with user.connect() as ws:
        await until_ready(ws)
        await runner.cleanup()
        with pytest.raises(websockets.ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 1001
