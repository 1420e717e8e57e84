"""The server as an operator runs it: real `goldenpath serve` processes killed, stopped, restarted.

- SIGKILL mid-run, restart on the same database: the orphaned runs end as `interrupted`, and a
  client that resumes from its last cursor gets that end as the very next event, with no gap.
- SIGTERM with runs in flight: what fits in the grace period completes, the rest is cancelled
  with reason `shutdown`, sockets close with 1001, the process exits 0.
- A connect storm while the server boots: 1013 before ready, `ready` after, never anything else;
  and a SIGTERM during the boot still exits 0 at once.
- None of it writes a password or an access token to the server's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import signal
import time
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.e2e.client import PASSWORD, TERMINAL, User, read_until, recv, register, until_ready
from tests.e2e.processes import (  # noqa: F401  (procs_fixture is the `procs` fixture)
    POSTGRES_HOST,
    POSTGRES_PORT,
    GatedProxy,
    ProcessHarness,
    ServerProcess,
    fresh_postgres_database,
    postgres_available,
    procs_fixture,
)
from tests.helpers import eventually

STORY = "tell me a story"  # not understood: a ~64-word fallback answer, 32 streamed pieces
SUM = "What is 17 * 23?"  # a calculator call and a short answer: 6 pieces in all

Frame = dict[str, Any]


def chat_frame(message: str, **fields: Any) -> str:
    return json.dumps({"type": "chat", "message": message, **fields})


def of_run(frames: list[Frame], run_id: str) -> list[Frame]:
    """The run's events (not its ack)."""
    return [f for f in frames if f.get("run_id") == run_id and "seq" in f]


def ended(frames: list[Frame], *run_ids: str) -> bool:
    return all(any(f["type"] in TERMINAL for f in of_run(frames, r)) for r in run_ids)


def on(user: User, process: ServerProcess) -> User:
    """The same user (and token) talking to another server process."""
    return dataclasses.replace(user, server=process.server, frames=[])


def assert_no_secrets(log: str, *secret_values: str) -> None:
    assert "goldenpath listening" in log  # the log was captured: the check below is not vacuous
    for value in secret_values:
        assert value not in log, f"a secret ({value[:6]}...) is in the server's log"


# -- 1. SIGKILL ----------------------------------------------------------------------------------


async def test_sigkill_mid_run_then_restart_ends_orphans_as_interrupted(procs: ProcessHarness) -> None:
    # With takeovers off (runs.max_takeovers 0): tests/e2e/test_durable_runs.py has them on.
    env = procs.env(MODEL__BUILTIN_DELAY_MS=200, RUNS__LEASE_TTL_S=1, RUNS__MAX_TAKEOVERS=0)
    first = await procs.start_ready(env)
    user = await register(first.server)
    seen: list[Frame] = []
    async with user.connect() as ws:
        await until_ready(ws)
        await ws.send(chat_frame(STORY))
        ack = await read_until(ws, lambda f: f["type"] == "ack", seen)
        assert ack["status"] == "running", ack
        running, thread_id = ack["run_id"], ack["thread_id"]
        await ws.send(chat_frame(STORY, thread_id=thread_id))
        queued_ack = await read_until(ws, lambda f: f["type"] == "ack" and f["run_id"] != running, seen)
        assert queued_ack["status"] == "queued", queued_ack
        queued = queued_ack["run_id"]
        await read_until(ws, lambda f: len(of_run(seen, running)) >= 3, seen)

        first.kill()
        assert await first.wait_exit(10) == -signal.SIGKILL
        # Whatever was already on the wire when it died counts as seen.
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:
                seen.append(await recv(ws, 5))

    before = of_run(seen, running)
    assert [f["seq"] for f in before] == list(range(1, len(before) + 1))
    assert not ended(seen, running) and not of_run(seen, queued)
    last = before[-1]

    second = procs.start(env)
    await second.wait_ready()
    booted = time.monotonic()
    user = on(user, second)
    after: list[Frame] = []
    async with user.connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "resume", "cursor": last["cursor"]}))
        await read_until(ws, lambda f: ended(after, running, queued), after, timeout=10)
    assert time.monotonic() - booted < 5

    resumed = of_run(after, running)
    assert len(resumed) == 1, resumed
    assert resumed[0]["type"] == "agent_error" and resumed[0]["data"]["code"] == "interrupted"
    assert resumed[0]["seq"] == last["seq"] + 1  # no gap, no repeat
    assert resumed[0]["cursor"] > last["cursor"]

    never_started = of_run(after, queued)
    assert [f["seq"] for f in never_started] == list(range(1, len(never_started) + 1))
    assert never_started[-1]["type"] == "agent_error"
    assert never_started[-1]["data"]["code"] == "interrupted"
    assert sum(f["type"] in TERMINAL for f in never_started) == 1

    for run_id in (running, queued):
        status, body = await user.http("GET", f"/api/runs/{run_id}")
        assert status == 200 and body["status"] == "failed", body
        assert body.get("error") == "interrupted", body

    assert await second.stop() == 0
    assert_no_secrets(procs.logs(), PASSWORD, user.token)


# -- 2. SIGTERM ----------------------------------------------------------------------------------


async def test_sigterm_finishes_what_fits_in_the_grace_and_cancels_the_rest(procs: ProcessHarness) -> None:
    # The streaming delay is one setting for the whole process, so one value serves both runs:
    # at 100 ms the sum takes ~0.5 s (well inside the 1 s grace), the story ~3.1 s (well outside).
    grace = 1.0
    env = procs.env(MODEL__BUILTIN_DELAY_MS=100, SERVER__SHUTDOWN_GRACE_S=grace)
    server = await procs.start_ready(env)
    user = await register(server.server)
    frames: list[Frame] = []
    async with user.connect() as ws:
        await until_ready(ws)
        await ws.send(chat_frame(STORY))
        long_ack = await read_until(ws, lambda f: f["type"] == "ack", frames)
        long_run = long_ack["run_id"]
        await read_until(ws, lambda f: f["type"] == "agent_message_delta", frames)
        await ws.send(chat_frame(SUM))
        short_run = (await read_until(ws, lambda f: f["type"] == "ack" and f["run_id"] != long_run,
                                      frames))["run_id"]
        await ws.send(chat_frame(STORY, thread_id=long_ack["thread_id"]))  # waits behind the long one
        queued_ack = await read_until(ws, lambda f: f["type"] == "ack" and f["run_id"] not in
                                      {long_run, short_run}, frames)
        assert queued_ack["status"] == "queued", queued_ack
        queued_run = queued_ack["run_id"]
        await read_until(ws, lambda f: f.get("run_id") == short_run and "seq" in f, frames)

        server.terminate()
        signalled = time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            await read_until(ws, lambda f: False, frames, timeout=grace + 8)
        close_code = ws.close_code
    assert close_code == 1001
    assert await server.wait_exit(grace + 8) == 0
    assert time.monotonic() - signalled < grace + 5

    live = {run_id: of_run(frames, run_id) for run_id in (short_run, long_run, queued_run)}
    for events in live.values():
        assert sum(f["type"] in TERMINAL for f in events) == 1 and events[-1]["type"] in TERMINAL
    short, long, queued = live[short_run], live[long_run], live[queued_run]
    assert short[-1]["type"] == "agent_completed" and "391" in short[-1]["data"]["text"]
    assert long[-1]["type"] == "agent_cancelled" and long[-1]["data"] == {"reason": "shutdown"}
    assert queued[-1]["type"] == "agent_cancelled" and queued[-1]["data"] == {"reason": "shutdown"}

    again = await procs.start_ready(env)
    user = on(user, again)
    for run_id, expected in ((short_run, "completed"), (long_run, "cancelled"), (queued_run, "cancelled")):
        status, body = await user.http("GET", f"/api/runs/{run_id}")
        assert status == 200 and body["status"] == expected, body
    stored: dict[str, list[int]] = {}
    async with user.connect() as ws:
        await until_ready(ws)
        for run_id in live:
            await ws.send(json.dumps({"type": "resume", "run_id": run_id, "after_seq": 0}))
            replayed: list[Frame] = []
            await read_until(ws, lambda f, r=run_id: f.get("run_id") == r and f["type"] in TERMINAL,
                             replayed)
            stored[run_id] = [f["seq"] for f in of_run(replayed, run_id)]
    assert await again.stop() == 0
    assert_no_secrets(procs.logs(), PASSWORD, user.token)

    for run_id, seqs in stored.items():
        assert seqs == list(range(1, len(seqs) + 1)), (run_id, seqs)  # the durable log has no gap
        assert {f["seq"] for f in live[run_id]} <= set(seqs)
    assert [f["seq"] for f in short] == stored[short_run]
    assert [f["seq"] for f in queued] == stored[queued_run]
    assert [f["seq"] for f in long] == stored[long_run]


# -- 3. a connect storm while the server boots --------------------------------------------------


@dataclasses.dataclass
class Attempt:
    started: float
    ended: float
    outcome: str  # "ready", "close <code>" or "error <what>"


async def connect_once(url: str, token: str) -> str:
    try:
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                      open_timeout=5, close_timeout=2) as ws:
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            except ConnectionClosed as exc:
                return f"close {exc.rcvd.code if exc.rcvd else None}"
            return "ready" if frame.get("type") == "ready" else f"frame {frame.get('type')}"
    except Exception as exc:
        return f"error {type(exc).__name__}: {exc}"


async def storm(url: str, token: str, until: float, attempts: list[Attempt]) -> None:
    """Connect again and again until two sockets in a row got `ready` (or the deadline)."""
    readies = 0
    while readies < 2 and (started := time.monotonic()) < until:
        outcome = await connect_once(url, token)
        attempts.append(Attempt(started, time.monotonic(), outcome))
        readies = readies + 1 if outcome == "ready" else 0


async def poll(url: str, token: str, until: float, answers: list[tuple[int, Any]] | None = None,
               ) -> list[tuple[int, Any]]:
    """GET `url` in a loop until it answers 200 (or the deadline); every answer, in order, in `answers`."""
    answers = [] if answers is None else answers
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < until:
            async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
                answers.append((response.status, await response.json(content_type=None)))
            if response.status == 200:
                break
            await asyncio.sleep(0.01)
    return answers


async def test_connect_storm_during_startup_gets_1013_then_ready(procs: ProcessHarness) -> None:
    assert await postgres_available(), f"PostgreSQL is not answering on {POSTGRES_HOST}:{POSTGRES_PORT}"
    # On a migrated database the boot lasts some tens of milliseconds: too short a window to
    # hit reliably. PostgreSQL behind a relay that holds connections is a database slow to answer
    # at start-up: the window stays open until every client has seen the server not ready, and
    # closes by itself. Nothing waits for a clock: each side waits for a state, under a deadline
    # that only a hung server would reach (a loaded machine boots slowly, but it boots).
    async with fresh_postgres_database() as name:
        direct = f"postgresql+asyncpg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
        first = await procs.start_ready(procs.env(direct))  # migrates the fresh database
        user = await register(first.server)
        assert await first.stop() == 0

        proxy = GatedProxy(POSTGRES_HOST, POSTGRES_PORT)
        try:
            port = await proxy.start()
            slow = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{name}"
            second = procs.start(procs.env(slow))
            await second.wait_listening()
            until = time.monotonic() + 60
            attempts: list[Attempt] = []
            readiness: list[tuple[int, Any]] = []
            me: list[tuple[int, Any]] = []
            url = second.base_url
            async with asyncio.timeout(90), asyncio.TaskGroup() as group:
                for _ in range(8):
                    group.create_task(storm(second.server.ws_url, user.token, until, attempts))
                group.create_task(poll(url + "/ready", user.token, until, readiness))
                group.create_task(poll(url + "/api/me", user.token, until, me))
                health = await poll(url + "/health", user.token, until)
                assert health[0] == (200, {"status": "ok"}) and not proxy.opened  # alive, not ready
                await eventually(  # the boot waits for the database, and every client has seen it
                    lambda: proxy.held >= 1 and readiness and me
                    and any(a.outcome == "close 1013" for a in attempts),
                    30, what=lambda: f"the start-up window seen by all ({proxy.held=}, "
                                     f"{readiness[:1]}, {me[:1]}, {[a.outcome for a in attempts][:3]})")
                proxy.open()
            assert await second.stop() == 0
        finally:
            await proxy.close()

    outcomes = [a.outcome for a in attempts]
    counts = {outcome: outcomes.count(outcome) for outcome in set(outcomes)}
    assert set(counts) <= {"ready", "close 1013"}, counts  # never 1011, never an error
    assert counts.get("close 1013", 0) >= 1 and counts.get("ready", 0) >= 1, counts
    assert proxy.held >= 1  # the boot really waited for the database
    first_ready = min(a.ended for a in attempts if a.outcome == "ready")
    late = [a for a in attempts if a.started > first_ready and a.outcome != "ready"]
    assert not late, late[:5]  # once ready, every new socket is taken

    statuses = [status for status, _ in readiness]
    assert statuses[0] == 503 and statuses[-1] == 200, statuses
    assert me[-1] == (200, {"user_id": user.user_id, "username": user.username}), me[-3:]
    assert me[0][0] == 503 and me[0][1]["error"]["code"] == "server_not_ready", me[0]
    assert all(body["error"]["code"] == "server_not_ready" for status, body in me if status == 503)
    assert_no_secrets(procs.logs(), PASSWORD, user.token)


async def test_sigterm_while_booting_exits_cleanly(procs: ProcessHarness) -> None:
    assert await postgres_available(), f"PostgreSQL is not answering on {POSTGRES_HOST}:{POSTGRES_PORT}"
    async with fresh_postgres_database() as name:
        proxy = GatedProxy(POSTGRES_HOST, POSTGRES_PORT)
        try:
            port = await proxy.start()
            server = procs.start(procs.env(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{name}"))
            await server.wait_healthy()
            await eventually(lambda: proxy.held, what="the boot waiting for the database")
            answers = await poll(server.base_url + "/ready", "", time.monotonic() + 1)
            status, body = answers[0]
            assert status == 503 and body["status"] == "starting"
            assert body["error"]["code"] == "server_not_ready" and body["error"]["message"]
            server.terminate()
            signalled = time.monotonic()
            assert await server.wait_exit(10) == 0
            assert time.monotonic() - signalled < 5
        finally:
            await proxy.close()
    log = server.log()
    assert "goldenpath stopped" in log and "goldenpath ready" not in log
    assert "Traceback" not in log, f"stopping during boot logged a traceback (see {server.log_path})"


# -- 4. no secret in the log ---------------------------------------------------------------------


async def test_logs_carry_no_password_and_no_token(procs: ProcessHarness) -> None:
    server = await procs.start_ready(procs.env(LOG__LEVEL="DEBUG", MODEL__BUILTIN_DELAY_MS=0))
    user = await register(server.server)
    wrong_password = f"wrong-{secrets.token_hex(8)}"
    forged = f"forged.{secrets.token_hex(16)}.token"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.post(server.base_url + "/api/auth/login",
                                json={"username": user.username, "password": wrong_password}) as r:
            assert r.status == 401
        async with session.post(server.base_url + "/api/auth/register",
                                json={"username": user.username, "password": PASSWORD}) as r:
            assert r.status == 409
        async with session.get(server.base_url + "/api/me",
                               headers={"Authorization": f"Bearer {forged}"}) as r:
            assert r.status == 401
    status, answer = await user.http("POST", "/api/chat/message", json={"message": SUM, "wait": True})
    assert status == 200 and answer["status"] == "completed", answer
    async with user.connect() as ws:
        await until_ready(ws)
        await ws.send(chat_frame(SUM))
        frames: list[Frame] = []
        await read_until(ws, lambda f: f["type"] in TERMINAL, frames)
    async with websockets.connect(server.server.ws_url,
                                  open_timeout=5) as ws:
        await ws.send(json.dumps({"type": "auth", "token": user.token}))
        await until_ready(ws)
    async with websockets.connect(server.server.ws_url,
                                  additional_headers={"Authorization": f"Bearer {forged}"},
                                  open_timeout=5) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws, 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert await server.stop() == 0

    log = procs.logs()
    assert "DEBUG" in log or "goldenpath ready" in log
    signature = user.token.rsplit(".", 1)[-1]
    assert_no_secrets(log, PASSWORD, wrong_password, user.token, signature, forged)
