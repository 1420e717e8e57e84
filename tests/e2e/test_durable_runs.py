"""Durable runs with real processes killed for real: a run whose process dies goes on from its last
checkpoint in the process that takes it over, and its user sees one continuous stream.

1. SQLite, one process: SIGKILL while one run's tool runs (a note save) and another run streams,
   with a third run queued behind the first; restart. Every run completes with its right answer,
   `run_resumed` once per started run, per-run seq gapless, each answer stored once, the note once.
2. SQLite, one process: a run killed at every step ends `interrupted` past runs.max_takeovers.
3. PostgreSQL + Redis, two processes, 50 users with runs in flight on B, sockets on both: SIGKILL
   B. Every run completes on A; no note saved twice (counted in the notes table).

The builtin model's "Step by step: ..." makes one tool call per model turn, and tools.pause_ms
holds each tool call open, so each kill lands at a known step (after a `tool_executing` arrived),
not by luck of timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests.e2e.client import TERMINAL, recv, register, until_ready
from tests.e2e.cluster import Frame, assert_complete, cluster, connected, end_of, events_of, on
from tests.e2e.processes import ProcessHarness, ServerProcess, procs_fixture  # noqa: F401

STEPS = "Step by step: 2 + 3; remember that my code is {n}; what is my code?"
STEPS_ANSWER = "2 + 3 = 5. Got it. I'll remember that your code is {n}. Your code is {n}."
STORY = "tell me a story"
KILLED_AT_EVERY_STEP = "Step by step: 1 + 1; 2 + 2; 3 + 3; 4 + 4; 5 + 5; 6 + 6"


def durable_env(procs: ProcessHarness, **settings: Any) -> dict[str, str]:
    # A stable instance name: the restart takes back its predecessor's runs at boot.
    return procs.env(**{"SERVER__INSTANCE_ID": "durable-1", "MODEL__BUILTIN_DELAY_MS": 120,
                        "TOOLS__PAUSE_MS": 2000, "RUNS__LEASE_TTL_S": 2, **settings})


async def read_into(ws: Any, into: list[Frame], done, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            into.append(await recv(ws, timeout))


async def seen_until_dead(ws: Any, into: list[Frame]) -> None:
    """Whatever was already on the wire when the process died counts as seen."""
    with contextlib.suppress(Exception):
        while True:
            into.append(await recv(ws, 5))


def one_continuous_stream(events: list[Frame], *, resumed: int = 1) -> str:
    """Seq 1..n, one terminal (agent_completed) and it is last, `run_resumed` `resumed` times; and
    the answer a client rebuilds (run_resumed's text, then the deltas after it) is the answer."""
    assert_complete(events, "agent_completed")
    marks = [i for i, e in enumerate(events) if e["type"] == "run_resumed"]
    assert len(marks) == resumed, [e["type"] for e in events]
    text = events[marks[-1]]["data"]["text"] if marks else ""
    start = marks[-1] + 1 if marks else 0
    text += "".join(e["data"]["delta"] for e in events[start:] if e["type"] == "agent_message_delta")
    assert text == events[-1]["data"]["text"], (text, events[-1]["data"]["text"])
    return text


def count_notes(db_path: Path, text: str) -> int:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return db.execute("SELECT count(*) FROM notes WHERE text = ?", (text,)).fetchone()[0]


async def kill(process: ServerProcess) -> None:
    process.kill()
    assert await process.wait_exit(10) == -signal.SIGKILL


async def test_sigkill_mid_tool_and_mid_stream_then_restart_every_run_completes(
        procs: ProcessHarness, tmp_path: Path) -> None:
    # The story streams ~6.4 s at 200 ms a piece; the kill comes ~3.6 s in (two model turns and a
    # held tool): the story is mid-stream at the kill however slow the machine is.
    env = durable_env(procs, MODEL__BUILTIN_DELAY_MS=200)
    first = await procs.start_ready(env)
    alice, bob = await register(first.server), await register(first.server)
    seen: dict[str, list[Frame]] = {"alice": [], "bob": []}
    async with alice.connect() as ws_a, bob.connect() as ws_b:
        for ws in (ws_a, ws_b):
            await until_ready(ws)
        await ws_b.send(json.dumps({"type": "chat", "message": STORY}))
        await ws_a.send(json.dumps({"type": "chat", "message": STEPS.format(n=41)}))
        await read_into(ws_a, seen["alice"], lambda: any(f["type"] == "ack" for f in seen["alice"]))
        ack = next(f for f in seen["alice"] if f["type"] == "ack")
        steps_run, thread = ack["run_id"], ack["thread_id"]
        await ws_a.send(json.dumps({"type": "chat", "message": "What is 6 * 7?", "thread_id": thread}))
        # Killed while the note save (step 2) is held open, the story mid-stream.
        await read_into(ws_a, seen["alice"], lambda: sum(
            f["type"] == "tool_executing" and f.get("run_id") == steps_run for f in seen["alice"]) == 2)
        await kill(first)
        await seen_until_dead(ws_a, seen["alice"])
        await seen_until_dead(ws_b, seen["bob"])
    queued_run = next(f["run_id"] for f in seen["alice"] if f["type"] == "ack" and f["run_id"] != steps_run)
    story_run = next(f["run_id"] for f in seen["bob"] if f["type"] == "ack")
    assert not any(f["type"] in TERMINAL for f in seen["alice"] + seen["bob"])
    assert any(f["type"] == "agent_message_delta" for f in events_of(seen["bob"], story_run))

    second = procs.start(env)
    await second.wait_ready()
    for name, user, runs in (("alice", alice, (steps_run, queued_run)), ("bob", bob, (story_run,))):
        last = [f for f in seen[name] if "cursor" in f]
        async with on(user, second).connect() as ws:
            await until_ready(ws)
            await ws.send(json.dumps({"type": "resume", "cursor": last[-1]["cursor"]}))
            await read_into(ws, seen[name], lambda got=seen[name], runs=runs: all(
                any(end_of(run)(f) for f in got) for run in runs))

    steps = one_continuous_stream(events_of(seen["alice"], steps_run))
    assert steps == STEPS_ANSWER.format(n=41)
    resumed = next(f for f in events_of(seen["alice"], steps_run) if f["type"] == "run_resumed")
    assert resumed["data"]["attempt"] == 1 and resumed["data"]["from_seq"] < resumed["seq"]
    one_continuous_stream(events_of(seen["bob"], story_run))
    queued = events_of(seen["alice"], queued_run)
    assert one_continuous_stream(queued, resumed=0) == "6 * 7 = 42."  # started after the restart
    assert count_notes(tmp_path / "gp.db", "my code is 41") == 1  # the save ran at most once in effect
    status, body = await on(alice, second).http("GET", f"/api/threads/{thread}/messages")
    assert status == 200, body
    answers = [m["text"] for m in body["messages"] if m["role"] == "assistant"]
    assert answers == [STEPS_ANSWER.format(n=41), "6 * 7 = 42."]  # each stored once, in order
    assert await second.stop() == 0


async def test_a_run_killed_past_max_takeovers_ends_interrupted(procs: ProcessHarness) -> None:
    env = durable_env(procs, RUNS__MAX_TAKEOVERS=2)
    process = await procs.start_ready(env)
    user = await register(process.server)
    seen: list[Frame] = []
    run_id = None
    for _ in range(3):  # killed at a step of each attempt: the first and two takeovers
        async with on(user, process).connect() as ws:
            await until_ready(ws)
            if run_id is None:
                await ws.send(json.dumps({"type": "chat", "message": KILLED_AT_EVERY_STEP}))
            else:
                await ws.send(json.dumps({"type": "resume", "run_id": run_id,
                                          "after_seq": events_of(seen, run_id)[-1]["seq"]}))
            executing = len([f for f in seen if f["type"] == "tool_executing"])
            await read_into(ws, seen, lambda executing=executing: len(
                [f for f in seen if f["type"] == "tool_executing"]) > executing)
            run_id = run_id or next(f["run_id"] for f in seen if f["type"] == "ack")
            await kill(process)
            await seen_until_dead(ws, seen)
        process = procs.start(env)
        await process.wait_ready()
    async with on(user, process).connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "resume", "run_id": run_id,
                                  "after_seq": events_of(seen, run_id)[-1]["seq"]}))
        await read_into(ws, seen, lambda: any(end_of(run_id)(f) for f in seen))
    events = events_of(seen, run_id)
    assert_complete(events, "agent_error")
    assert events[-1]["data"]["code"] == "interrupted"
    assert [f["data"]["attempt"] for f in events if f["type"] == "run_resumed"] == [1, 2]
    status, body = await on(user, process).http("GET", f"/api/runs/{run_id}")
    assert status == 200 and (body["status"], body["error"]) == ("failed", "interrupted"), body
    assert await process.stop() == 0


async def test_two_processes_fifty_users_sigkill_one_every_run_completes_on_the_other(
        procs: ProcessHarness, tmp_path: Path) -> None:
    async with cluster(procs, tmp_path, MODEL__BUILTIN_DELAY_MS=120, TOOLS__PAUSE_MS=2000) as c:
        users = await asyncio.gather(*(register(c.a.server) for _ in range(50)))
        sockets = [await connected(on(user, c.a if i % 2 else c.b)) for i, user in enumerate(users)]
        frames: list[list[Frame]] = [[] for _ in users]
        try:
            for i, ws in enumerate(sockets):
                await ws.send(json.dumps({"type": "chat", "message": STEPS.format(n=1000 + i),
                                          "client_message_id": f"m{i}"}))
            # Half the users sent to B (their sockets are there): B runs those; A the rest.
            readers = [asyncio.create_task(read_into(ws, frames[i], lambda i=i: any(
                f["type"] == "tool_executing" for f in frames[i]))) for i, ws in enumerate(sockets)]
            await asyncio.gather(*readers)  # every run is in flight, each at its first tool
            c.b.kill()
            assert await c.b.wait_exit(10) == -signal.SIGKILL
            for i, ws in enumerate(sockets):
                if i % 2 == 0:  # B's sockets died with it: their users come back on A
                    await seen_until_dead(ws, frames[i])
                    await ws.close()
                    last = [f for f in frames[i] if "cursor" in f][-1]
                    sockets[i] = await on(users[i], c.a).connect()
                    await until_ready(sockets[i])
                    await sockets[i].send(json.dumps({"type": "resume", "cursor": last["cursor"]}))
            # B's runs (its users' sockets were on B) not ended when it died, as far as anyone saw
            # before it died: the ones to resume. On a slow machine the first may end before the
            # last starts; nearly all are cut off.
            cut_off = sum(1 for i in range(0, 50, 2) if not any(f["type"] in TERMINAL for f in frames[i]))
            assert cut_off >= 20, cut_off
            run_ids = [next(f["run_id"] for f in frames[i] if f["type"] == "ack") for i in range(50)]
            await asyncio.gather(*(read_into(ws, frames[i], lambda i=i: any(
                end_of(run_ids[i])(f) for f in frames[i]), timeout=120) for i, ws in enumerate(sockets)))
        finally:
            for ws in sockets:
                await ws.close()
        resumed = 0
        for i in range(50):
            events = events_of(frames[i], run_ids[i])
            marks = sum(e["type"] == "run_resumed" for e in events)
            resumed += marks
            assert one_continuous_stream(events, resumed=marks) == STEPS_ANSWER.format(n=1000 + i)
            assert not [f for f in frames[i] if f.get("run_id") not in (None, run_ids[i])]  # own only
        # B's runs it died with, each resumed once (a run whose end was stored but not yet sent
        # when B died is not resumed: its end comes on resume).
        assert 20 <= resumed <= cut_off, (resumed, cut_off)
        async with aiohttp.ClientSession() as session, session.get(f"{c.a.base_url}/metrics") as response:
            metrics = await response.text()
        assert f'goldenpath_run_takeovers_total{{outcome="resumed"}} {resumed}.0' in metrics
        assert f"goldenpath_runs_resumed_total {resumed}.0" in metrics
        database = c.a.env["GOLDENPATH_DATABASE__URL"].replace("postgresql+asyncpg", "postgresql")
        db = await asyncpg.connect(database)
        try:
            saved = await db.fetch("SELECT text, count(*) AS n FROM notes GROUP BY text")
        finally:
            await db.close()
        assert sorted(row["text"] for row in saved) == sorted(f"my code is {1000 + i}" for i in range(50))
        assert {row["n"] for row in saved} == {1}, saved  # no note saved twice
