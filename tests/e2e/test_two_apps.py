"""Two servers sharing PostgreSQL and Redis: a user's socket on A, the run on B, cancel from A."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
import websockets

from tests.e2e.client import TERMINAL, Server, User, recv, register, until_ready

PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "test"}


@pytest.fixture
async def shared() -> AsyncIterator[dict]:
    """A fresh PostgreSQL database and a private Redis channel; PostgreSQL or Redis down fails."""
    name = f"gp_two_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(**PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {"database": {"url": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"},
               "bus": {"backend": "redis", "channel": f"gp-test-{secrets.token_hex(6)}"}}
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def on(server: Server, user: User) -> User:
    return User(server=server, username=user.username, user_id=user.user_id, token=user.token)


async def test_events_cross_processes_once_and_in_order(make_server, shared) -> None:
    a: Server = await make_server(**shared)
    b: Server = await make_server(**shared, model={"builtin_delay_ms": 5})
    user = await register(a)
    async with on(a, user).connect() as ws_a, on(b, user).connect() as ws_b:
        await until_ready(ws_a)
        await until_ready(ws_b)
        status, accepted = await on(b, user).http("POST", "/api/chat/message",
                                                  json={"message": "What is 17 * 23?"})
        assert status == 202
        for ws in (ws_a, ws_b):
            events = []
            while not events or events[-1]["type"] not in TERMINAL:
                events.append(await recv(ws))
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            assert {e["run_id"] for e in events} == {accepted["run_id"]}
            assert "391" in events[-1]["data"]["text"]


async def test_cancel_sent_to_a_stops_the_run_on_b(make_server, shared) -> None:
    a: Server = await make_server(**shared)
    b: Server = await make_server(**shared, model={"builtin_delay_ms": 50})
    user = await register(a)
    async with on(a, user).connect() as ws_a:
        await until_ready(ws_a)
        status, accepted = await on(b, user).http("POST", "/api/chat/message",
                                                  json={"message": "tell me a story"})
        assert status == 202
        while (await recv(ws_a))["type"] != "agent_message_delta":
            pass
        await ws_a.send(json.dumps({"type": "cancel", "run_id": accepted["run_id"]}))
        while (frame := await recv(ws_a))["type"] not in TERMINAL:
            pass
        assert frame["type"] == "agent_cancelled" and frame["data"] == {"reason": "user"}
    _, run = await on(a, user).http("GET", f"/api/runs/{accepted['run_id']}")
    assert run["status"] == "cancelled"


async def test_per_user_limits_hold_across_processes(make_server, shared) -> None:
    a: Server = await make_server(**shared, limits={"max_pending_runs_per_user": 2},
                                  model={"builtin_delay_ms": 50})
    b: Server = await make_server(**shared, limits={"max_pending_runs_per_user": 2},
                                  model={"builtin_delay_ms": 50})
    user = await register(a)
    for server in (a, b):
        status, _ = await on(server, user).http("POST", "/api/chat/message",
                                                json={"message": "tell me a story"})
        assert status == 202
    status, body = await on(b, user).http("POST", "/api/chat/message", json={"message": "third"})
    assert status == 429 and body["error"]["code"] == "limit_exceeded"


async def test_a_logout_on_b_closes_the_users_sockets_on_a(make_server, shared) -> None:
    """Revocation reaches every process: an open socket elsewhere does not outlive a logout."""
    a: Server = await make_server(**shared)
    b: Server = await make_server(**shared)
    user, bystander = await register(a), await register(a)
    async with on(a, user).connect() as mine, on(a, bystander).connect() as theirs:
        await until_ready(mine)
        await until_ready(theirs)
        status, _ = await on(b, user).http("POST", "/api/auth/logout")
        assert status == 204
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                while True:
                    await mine.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        await theirs.send(json.dumps({"type": "ping"}))
        assert (await recv(theirs))["type"] == "pong"  # another user's socket is not touched


async def test_the_message_rate_holds_across_processes(make_server, shared) -> None:
    """Two processes behind a load balancer do not double a user's messages per minute."""
    a: Server = await make_server(**shared, security={"messages_per_minute": 2})
    b: Server = await make_server(**shared, security={"messages_per_minute": 2})
    user, other = await register(a), await register(a)
    for server in (a, b):
        status, _ = await on(server, user).http("POST", "/api/chat/message", json={"message": "hi"})
        assert status == 202
    status, body = await on(b, user).http("POST", "/api/chat/message", json={"message": "hi"})
    assert status == 429 and body["error"]["code"] == "rate_limited"
    status, _ = await on(b, other).http("POST", "/api/chat/message", json={"message": "hi"})
    assert status == 202  # another user's rate is their own
