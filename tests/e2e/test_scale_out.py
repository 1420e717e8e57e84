"""Scale-out: two real `goldenpath serve` processes, A and B, sharing PostgreSQL and a Redis.

Every test gets a fresh PostgreSQL database, a private `redis-server` on a free port (never the
machine's) and its own bus channel, so parallel runs never mix; the processes, the database and
the Redis are gone afterwards whatever way the test ended.

1. A user's socket on A, the message posted on B: A's socket and a second socket on B get the
   same frames, each once, in order; a cancel sent on A stops a run that B runs.
2. 100 users over both processes, half of them posting through the other process's HTTP API:
   each gets their own answer and not one frame of anyone else.
3. B killed with SIGKILL mid-run: A's housekeeping ends the run `interrupted` within seconds,
   as the next seq on the socket on A, and a resume by cursor on A gets exactly what was missed.
4. Redis stopped for ~1.5 s mid-run and started again: the socket on A ends up with every event
   of the run exactly once, the ones published during the outage by the catch-up from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.e2e.client import User, read_until, register, until_ready
from tests.e2e.cluster import (
    LEASE_TTL_S,
    Cluster,
    Frame,
    assert_complete,
    cluster,
    connected,
    drain,
    end_of,
    events_of,
    on,
    ping,
    post,
    run_status,
)
from tests.e2e.processes import ProcessHarness, procs_fixture  # noqa: F401  (the `procs` fixture)

STORY = "tell me a story"  # not understood: a ~64-word fallback answer, ~32 streamed pieces
SUM = "What is 17 * 23?"  # a calculator call and a short answer
LONG_DELAY_MS = 100  # the story then streams for ~3 s

# -- 1. events and cancels cross processes --------------------------------------------------------


async def test_events_reach_both_processes_once_and_a_cancel_on_a_stops_a_run_on_b(
        procs: ProcessHarness, tmp_path: Path) -> None:
    async with cluster(procs, tmp_path, MODEL__BUILTIN_DELAY_MS=LONG_DELAY_MS) as c:
        user = await register(c.a.server)
        async with contextlib.AsyncExitStack() as stack:
            ws_a = await connected(on(user, c.a))
            stack.push_async_callback(ws_a.close)
            ws_b = await connected(on(user, c.b))
            stack.push_async_callback(ws_b.close)

            # Posted over HTTP on B: B runs it, A's socket gets it through Redis.
            short = await post(user, c.b, SUM)
            seen_a: list[Frame] = []
            seen_b: list[Frame] = []
            await asyncio.gather(read_until(ws_a, end_of(short), seen_a),
                                 read_until(ws_b, end_of(short), seen_b))
            await asyncio.gather(drain(ws_a, seen_a), drain(ws_b, seen_b))
            assert seen_a == events_of(seen_a, short), "a frame other than the run's events on A"
            assert_complete(seen_a, "agent_completed")
            assert seen_a[0]["type"] == "agent_started" and "391" in seen_a[-1]["data"]["text"]
            assert seen_b == seen_a  # the very same frames, once each, in the same order

            # A long run on B, stopped by a cancel frame sent on A.
            long = await post(user, c.b, STORY)
            live_a: list[Frame] = []
            live_b: list[Frame] = []
            await read_until(ws_a, lambda f: f.get("run_id") == long and f["type"] == "agent_message_delta",
                             live_a)
            await ws_a.send(json.dumps({"type": "cancel", "run_id": long}))
            sent = time.monotonic()

            async def ended(ws: Any, into: list[Frame]) -> float:
                await read_until(ws, end_of(long), into, timeout=5)
                return time.monotonic() - sent

            took_a, took_b = await asyncio.gather(ended(ws_a, live_a), ended(ws_b, live_b))
            await asyncio.gather(drain(ws_a, live_a), drain(ws_b, live_b))

        print(f"cancel forwarded A -> B: ended on A after {took_a:.3f} s, on B after {took_b:.3f} s")
        assert took_a < 1.0 and took_b < 1.0, (took_a, took_b)
        events_a = events_of(live_a, long)
        assert_complete(events_a, "agent_cancelled")
        assert events_a[-1]["data"] == {"reason": "user"}
        assert len(events_a) < 30  # stopped, not streamed to the end
        assert live_a == events_a and live_b == live_a  # nothing else, and the same frames on B
        for process in (c.a, c.b):
            body = await run_status(user, process, long)
            assert body["status"] == "cancelled", (process.name, body)
            assert (await run_status(user, process, short))["status"] == "completed"


# -- 2. a hundred users, two processes, no leak ----------------------------------------------------

USERS = 100


@dataclasses.dataclass
class Outcome:
    user: User
    secret: str
    via_http: bool
    frames: list[Frame]
    run_ids: list[str]
    answers: list[Frame]


async def one_user(c: Cluster, index: int, barrier: asyncio.Barrier) -> Outcome:
    home, other = (c.a, c.b) if index % 2 == 0 else (c.b, c.a)
    via_http = (index // 2) % 2 == 1  # half of those on A, half of those on B
    user = await register(home.server, f"scale_{index:03d}_{secrets.token_hex(3)}")
    secret = f"{1000 + index}-{secrets.token_hex(5)}"
    frames: list[Frame] = []
    run_ids: list[str] = []
    answers: list[Frame] = []
    async with user.connect() as ws:
        frames.append(await until_ready(ws))
        await ping(ws)
        await barrier.wait()  # every socket is open before anyone chats: 99 foreign sockets to leak to
        for text in (f"Remember that my vault code is {secret}", "What is my vault code?"):
            if via_http:
                run_id = await post(user, other, text)
            else:
                await ws.send(json.dumps({"type": "chat", "message": text}))
                run_id = (await read_until(ws, lambda f: f["type"] == "ack", frames, 30))["run_id"]
            run_ids.append(run_id)
            answers.append(await read_until(ws, end_of(run_id), frames, 30))
        await barrier.wait()  # and stay open until everyone is done
        await drain(ws, frames, quiet=0.3)
    return Outcome(user, secret, via_http, frames, run_ids, answers)


async def test_a_hundred_users_over_two_processes_each_get_only_their_own(
        procs: ProcessHarness, tmp_path: Path) -> None:
    async with cluster(procs, tmp_path, MODEL__BUILTIN_DELAY_MS=5) as c:
        barrier = asyncio.Barrier(USERS)
        began = time.monotonic()
        async with asyncio.timeout(45), asyncio.TaskGroup() as group:
            tasks = [group.create_task(one_user(c, i, barrier)) for i in range(USERS)]
        outcomes = [t.result() for t in tasks]
        print(f"{USERS} users, {2 * USERS} runs over two processes in {time.monotonic() - began:.1f} s")

    assert sum(o.via_http for o in outcomes) == USERS // 2
    secrets_by_user = {o.user.user_id: o.secret for o in outcomes}
    failed = [(o.user.username, a["run_id"], a["type"], a["data"]) for o in outcomes for a in o.answers
              if a["type"] != "agent_completed"]
    assert not failed, f"{len(failed)} of {2 * USERS} runs did not complete: {failed[:5]}"
    for o in outcomes:
        user_id = o.user.user_id
        assert o.frames[0]["user_id"] == user_id
        recall = o.answers[1]
        assert o.secret in recall["data"]["text"], recall
        foreign = [f for f in o.frames if "run_id" in f and f["run_id"] not in o.run_ids]
        assert not foreign, f"{user_id} got frames of others' runs: {foreign[:3]}"
        wire = json.dumps(o.frames)
        leaked = [other for other, secret in secrets_by_user.items() if other != user_id and secret in wire]
        assert not leaked, f"the notes of {leaked[:3]} reached {user_id}"
        for run_id in o.run_ids:
            assert_complete(events_of(o.frames, run_id), "agent_completed")


# -- 3. the process that runs the run dies ------------------------------------------------------


async def test_sigkill_of_the_owner_ends_its_run_interrupted_through_the_other_process(
        procs: ProcessHarness, tmp_path: Path) -> None:
    # With takeovers off (runs.max_takeovers 0): test_durable_runs has them on.
    async with cluster(procs, tmp_path, MODEL__BUILTIN_DELAY_MS=LONG_DELAY_MS, RUNS__MAX_TAKEOVERS=0) as c:
        user = await register(c.a.server)
        watched: list[Frame] = []
        async with contextlib.AsyncExitStack() as stack:
            watcher = await connected(on(user, c.a))
            stack.push_async_callback(watcher.close)
            leaver = await connected(on(user, c.a))  # leaves mid-run, comes back with its cursor
            run_id = await post(user, c.b, STORY)

            left: list[Frame] = []
            await read_until(leaver, lambda f: f.get("run_id") == run_id and f.get("seq") == 2, left)
            await leaver.close()
            last_seen = events_of(left, run_id)[-1]

            # Killed right after an event arrived: B is between two pieces, nothing half-published.
            await read_until(watcher, lambda f: f.get("run_id") == run_id and f.get("seq", 0) >= 5, watched)
            c.b.kill()
            killed = time.monotonic()
            assert await c.b.wait_exit(10) == -signal.SIGKILL
            end = await read_until(watcher, end_of(run_id), watched, timeout=10)
            took = time.monotonic() - killed
            await drain(watcher, watched)

        print(f"SIGKILL of the owner -> interrupted on A after {took:.2f} s")
        assert end["type"] == "agent_error" and end["data"]["code"] == "interrupted", end
        assert took < LEASE_TTL_S + 3, took
        events = events_of(watched, run_id)
        assert_complete(events, "agent_error")  # the agent_error is the next seq: no gap, no repeat
        assert events[-2]["type"] == "agent_message_delta"
        body = await run_status(user, c.a, run_id)
        assert body["status"] == "failed" and body["error"] == "interrupted", body

        resumed: list[Frame] = []
        async with on(user, c.a).connect() as ws:
            await until_ready(ws)
            await ws.send(json.dumps({"type": "resume", "cursor": last_seen["cursor"]}))
            await read_until(ws, end_of(run_id), resumed)
            await drain(ws, resumed)
        missed = [e for e in events if e["seq"] > last_seen["seq"]]
        assert events_of(resumed, run_id) == missed  # exactly the missing ones, none twice
        assert resumed == missed  # and nothing else


# -- 4. Redis goes away mid-run and comes back ----------------------------------------------------


def gapless_prefix(events: list[Frame]) -> list[Frame]:
    prefix: list[Frame] = []
    for event in events:
        if event["seq"] != len(prefix) + 1:
            break
        prefix.append(event)
    return prefix


def complete(events: list[Frame]) -> bool:
    try:
        assert_complete(events)
    except AssertionError:
        return False
    return True


def wall(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


async def test_a_redis_restart_mid_run_loses_and_repeats_nothing(
        procs: ProcessHarness, tmp_path: Path) -> None:
    async with cluster(procs, tmp_path, MODEL__BUILTIN_DELAY_MS=LONG_DELAY_MS) as c:
        user = await register(c.a.server)
        live: list[Frame] = []
        async with on(user, c.a).connect() as ws:
            await until_ready(ws)
            await ping(ws)
            run_id = await post(user, c.b, STORY)
            await read_until(ws, lambda f: f.get("run_id") == run_id and f.get("seq") == 3, live)

            stopped = time.time()
            assert await c.redis.stop() == 0
            await asyncio.sleep(max(0.0, 1.5 - (time.time() - stopped)))
            await c.redis.start()
            restarted = time.time()

            end = await read_until(ws, end_of(run_id), live, timeout=20)
            ended = time.time()
            await drain(ws, live, quiet=1.0)  # anything repeated by a late catch-up shows up here

        events = events_of(live, run_id)
        during = [e for e in events if stopped <= wall(e["ts"]) <= restarted]
        print(f"redis down {restarted - stopped:.2f} s; {len(during)} events stored meanwhile; the "
              f"terminal event reached A {ended - restarted:.2f} s after redis was back; "
              f"{len(events)} events on A's socket, seqs {[e['seq'] for e in events]}")
        assert end["type"] == "agent_completed", end
        assert len(during) >= 5, "the outage did not overlap the run: the test proves nothing"

        # The weaker property, measured before the stronger one is asserted: a resume by cursor
        # on a new socket to A fills whatever the live socket missed.
        prefix = gapless_prefix(events)
        resumed: list[Frame] = []
        stored: list[Frame] = []
        if not complete(prefix):
            async with on(user, c.a).connect() as ws:
                await until_ready(ws)
                await ws.send(json.dumps({"type": "resume", "cursor": prefix[-1]["cursor"]}))
                await read_until(ws, end_of(run_id), resumed)
        async with on(user, c.a).connect() as ws:
            await until_ready(ws)
            await ws.send(json.dumps({"type": "resume", "run_id": run_id, "after_seq": 0}))
            await read_until(ws, end_of(run_id), stored)
        filled = complete(prefix + events_of(resumed, run_id))
        log = events_of(stored, run_id)

        assert complete(events), (
            f"A's socket did not get every event exactly once: seqs {[e['seq'] for e in events]}; "
            f"a resume by cursor on a new socket {'did' if filled else 'did NOT'} fill the gap")
        assert events == log  # exactly what the durable log holds, frame for frame
        assert filled
