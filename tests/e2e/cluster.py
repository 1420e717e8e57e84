"""Two real `goldenpath serve` processes sharing a fresh PostgreSQL database and a private Redis,
and the frame helpers the multi-process tests share."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

from tests.e2e.client import TERMINAL, User, read_until, until_ready
from tests.e2e.processes import (
    POSTGRES_HOST,
    POSTGRES_PORT,
    ProcessHarness,
    RedisServer,
    ServerProcess,
    fresh_postgres_database,
    postgres_available,
    private_redis,
)

LEASE_TTL_S = 1  # the minimum: a dead process's runs are claimed ~1.3 s after its last renewal

Frame = dict[str, Any]


# -- two processes, one database, one Redis ----------------------------------------------------


@dataclasses.dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    redis: RedisServer
    procs: ProcessHarness


@contextlib.asynccontextmanager
async def cluster(procs: ProcessHarness, tmp_path: Path, database_url: str | None = None,
                  **settings: Any) -> AsyncIterator[Cluster]:
    """`database_url`: a database of the test's own (a private cluster); else a fresh one on the
    shared server. `settings` win over the defaults here (RUNS__LEASE_TTL_S too)."""
    # A missing service fails the run (CI starts them); a skip would hide it.
    if database_url is None:
        assert await postgres_available(), f"PostgreSQL is not answering on {POSTGRES_HOST}:{POSTGRES_PORT}"
    assert shutil.which("redis-server"), "redis-server is not on the PATH"
    async with contextlib.AsyncExitStack() as services:
        if database_url is None:
            name = await services.enter_async_context(fresh_postgres_database())
            database_url = f"postgresql+asyncpg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
        redis = await services.enter_async_context(private_redis(tmp_path))
        env = procs.env(database_url, **{"BUS__BACKEND": "redis", "BUS__REDIS_URL": redis.url,
                                         "BUS__CHANNEL": f"gp-scale-{secrets.token_hex(6)}",
                                         "RUNS__LEASE_TTL_S": LEASE_TTL_S, **settings})
        try:
            a = await procs.start_ready(env)  # migrates the fresh database; B then finds it done
            b = await procs.start_ready(env)
            yield Cluster(a=a, b=b, redis=redis, procs=procs)
        except BaseException:
            print(f"--- server logs ---\n{procs.logs()[-12000:]}\n--- redis log ---\n{redis.log()[-2000:]}")
            raise
        finally:
            procs.cleanup()  # before the database is dropped under them


def on(user: User, process: ServerProcess) -> User:
    """The same user (and token) talking to another process."""
    return dataclasses.replace(user, server=process.server, frames=[])


# -- reading frames, always with a deadline ------------------------------------------------------


async def drain(ws: Any, into: list[Frame], quiet: float = 0.4, cap: float = 5) -> None:
    """Keep reading until nothing came for `quiet` seconds: whatever arrives late is caught too."""
    deadline = time.monotonic() + cap
    with contextlib.suppress(TimeoutError, ConnectionClosed):
        while time.monotonic() < deadline:
            into.append(json.loads(await asyncio.wait_for(ws.recv(), quiet)))


async def ping(ws: Any) -> None:
    """A first frame releases the live events a new socket holds back for a possible resume."""
    await ws.send(json.dumps({"type": "ping"}))
    assert await read_until(ws, lambda f: f["type"] == "pong", []) == {"type": "pong"}


async def connected(user: User) -> Any:
    """An open socket past its `ready` and first frame; the caller closes it."""
    ws = await user.connect()
    try:
        await until_ready(ws)
        await ping(ws)
    except BaseException:
        await ws.close()
        raise
    return ws


def end_of(run_id: str) -> Callable[[Frame], bool]:
    return lambda f: f.get("run_id") == run_id and f.get("type") in TERMINAL


def events_of(frames: list[Frame], run_id: str) -> list[Frame]:
    return [f for f in frames if f.get("run_id") == run_id and "seq" in f]


def assert_complete(events: list[Frame], terminal: str | None = None) -> None:
    """Seq 1..n, each once, in order; exactly one terminal event and it is the last."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert sum(e["type"] in TERMINAL for e in events) == 1 and events[-1]["type"] in TERMINAL, \
        [e["type"] for e in events]
    assert [e["cursor"] for e in events] == sorted(e["cursor"] for e in events)
    if terminal is not None:
        assert events[-1]["type"] == terminal, events[-1]


async def post(user: User, process: ServerProcess, message: str, **fields: Any) -> str:
    status, body = await on(user, process).http("POST", "/api/chat/message",
                                                json={"message": message, **fields})
    assert status == 202, body
    return body["run_id"]


async def run_status(user: User, process: ServerProcess, run_id: str) -> dict[str, Any]:
    status, body = await on(user, process).http("GET", f"/api/runs/{run_id}")
    assert status == 200, body
    return body
