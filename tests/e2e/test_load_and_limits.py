"""Many cycles leave nothing behind; a reader too slow is cut off with 4408; limits answer clearly."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import tracemalloc

import pytest
import websockets

from entrypoints.appkeys import services
from tests.e2e.client import Server, chat, recv, register, until_ready
from tests.helpers import eventually

CYCLES = 1000
WORKERS = 8


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle(server: Server) -> None:
    """Wait until no run and no socket is left, twice in a row (runs may still be arriving)."""
    found = services(server.app)
    quiet = 0

    def idle_five_times_running() -> bool:
        nonlocal quiet
        quiet = quiet + 1 if found.runs.active == 0 and not found.bridge.connections() else 0
        return quiet == 5

    await eventually(idle_five_times_running, 30, interval=0.05, what=lambda: (
        f"an idle server ({found.runs.active} runs, {len(found.bridge.connections())} sockets)"))
    gc.collect()


@pytest.mark.slow
async def test_a_thousand_connect_chat_drop_cycles_leave_nothing_behind(make_server) -> None:
    server: Server = await make_server(limits={"max_pending_runs_per_user": 64,
                                               "max_engines_per_user": 64},
                                       security={"messages_per_minute": 10_000})
    user = await register(server)

    async def cycle() -> None:
        async with user.connect() as ws:
            await until_ready(ws)
            await ws.send(json.dumps({"type": "chat", "message": "What is 2 + 2?"}))
            while (await recv(ws))["type"] != "ack":  # earlier runs of this user stream here too
                pass
        # dropped mid-run: the run goes on without its socket

    async def worker(n: int) -> None:
        for _ in range(n):
            await cycle()

    # Warm up at full concurrency, so pooled database connections count in the baseline.
    await asyncio.gather(*(worker(1) for _ in range(WORKERS)))
    await settle(server)
    tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()

    await asyncio.gather(*(worker(CYCLES // WORKERS) for _ in range(WORKERS)))
    await settle(server)
    found = services(server.app)
    metrics = found.factory.metrics()
    assert metrics.active == 0 and metrics.created == CYCLES + WORKERS == metrics.cleaned_up
    assert found.runs.active == 0 and found.bridge.connections() == []
    assert len(asyncio.all_tasks()) <= tasks_before
    assert open_fds() <= fds_before
    threads: list[dict] = []
    cursor = None
    for _ in range(CYCLES):  # a page at a time, to the last (a deadline in pages, not in seconds)
        paging = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        _, page = await user.http("GET", "/api/threads", params=paging)
        threads += page["threads"]
        if (cursor := page["next_cursor"]) is None:
            break
    assert len(threads) == CYCLES + WORKERS and len({t["thread_id"] for t in threads}) == len(threads)
    _status, run = await user.http("GET", f"/api/threads/{threads[0]['thread_id']}/messages")
    assert run["messages"][-1]["role"] == "assistant"  # the dropped run still finished


async def test_a_client_that_never_reads_is_closed_with_4408_and_memory_stays_flat(make_server) -> None:
    server: Server = await make_server(
        server={"ws_send_queue": 32},
        limits={"max_pending_runs_per_user": 500, "max_engines_per_user": 100},
        security={"messages_per_minute": 10_000},
        runs={"delta_window_ms": 0},  # every piece its own event: many frames to queue
    )
    user = await register(server)
    # A tiny receive window and a client library that stops reading after one message.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1])))
    note = " ".join(["ab"] * 600)
    gc.collect()
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    async with websockets.connect(server.ws_url, sock=sock, additional_headers=user.auth,
                                  max_queue=1) as slow:
        for _ in range(80):  # 80 runs of ~320 events, ~6 MB: held unbounded, it would show below
            await slow.send(json.dumps({"type": "chat", "message": f"Remember that my note is {note}"}))
        found = services(server.app)
        await eventually(lambda: not found.bridge.connections_of(user.user_id), 30, interval=0.05,
                         what="the slow socket cut off")
        await settle(server)
        assert found.runs.active == 0
        growth = tracemalloc.get_traced_memory()[0] - baseline
        tracemalloc.stop()
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(slow.recv(), 10)
    assert slow.close_code == 4408
    assert found.bridge.frames_dropped > 0
    assert growth < 3 * 2**20, f"the server kept {growth / 2**20:.1f} MiB for a socket it closed"
    # The runs went on without the socket, and the user can come back.
    async with user.connect() as ws:
        await until_ready(ws)
        _, events = await chat(ws, "What is 17 * 23?")
        assert "391" in events[-1]["data"]["text"]
    assert found.factory.metrics().active == 0


async def test_limits_answer_limit_exceeded_over_websocket_and_429_over_http(make_server) -> None:
    server: Server = await make_server(model={"builtin_delay_ms": 50},
                                       limits={"max_pending_runs_per_user": 2})
    user, other = await register(server), await register(server)
    async with user.connect() as ws:
        await until_ready(ws)
        for _ in range(2):
            await ws.send(json.dumps({"type": "chat", "message": "tell me a story"}))
            while (await recv(ws))["type"] != "ack":
                pass
        await ws.send(json.dumps({"type": "chat", "message": "one more", "client_message_id": "x"}))
        while (frame := await recv(ws))["type"] != "error":
            pass
        assert frame["code"] == "limit_exceeded" and frame["client_message_id"] == "x"
        status, body = await user.http("POST", "/api/chat/message", json={"message": "and more"})
        assert status == 429 and body["error"]["code"] == "limit_exceeded"
        status, body = await other.http("POST", "/api/chat/message",
                                        json={"message": "hi", "wait": True})
        assert status == 200 and body["status"] == "completed"  # other users are not affected
