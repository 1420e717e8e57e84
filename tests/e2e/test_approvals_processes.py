"""Approvals with real `goldenpath serve` processes: a run waiting for its user's decision is its
stored checkpoint alone, so it outlives its process, and the decision may come to any process.

1. SQLite, one process: the run asks, the server is SIGKILLed, restarted (same instance id). The
   restart takes back a run that was streaming (run_resumed) but not the waiting one: it still
   waits, listed as pending; decided over a new socket it goes on and completes, one stream of
   seqs across the restart, one terminal event, the note gone.
2. PostgreSQL + Redis, two processes A and B: the run asks on A and the decision goes to B, which
   runs the rest; A's socket gets it all through Redis. Twenty users waiting on A, all decided on
   B at once: each completes once, and A holds no engine from the question to the end. A killed
   while its run waits: B takes the decision at once (there is no lease to wait out).
3. Races across the two processes: a decision against a cancel, and two decisions, for the same
   run. Exactly one terminal event, the run's status says the same, the loser's answer fits.

The builtin model's "Forget my locker code" calls delete_notes, whose policy is `ask`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests.e2e.client import TERMINAL, User, read_until, recv, register, until_ready
from tests.e2e.cluster import (
    Cluster,
    Frame,
    assert_complete,
    cluster,
    connected,
    drain,
    end_of,
    events_of,
    on,
    run_status,
)
from tests.e2e.processes import ProcessHarness, ServerProcess, procs_fixture  # noqa: F401
from tests.helpers import eventually

REMEMBER = "Remember that my locker code is {code}"
FORGET = "Forget my locker code"
FORGOT = "Done: I forgot your locker code is {code}."
NOTE = "my locker code is {code}"
DENIED_ANSWER = "OK, I did not use delete_notes: you did not approve it."
STORY = "tell me a story"  # not understood: ~32 streamed pieces


# -- helpers -------------------------------------------------------------------------------------


async def metrics(process: ServerProcess) -> dict[str, float]:
    """The process's /metrics as {'name{labels}': value}."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
            session.get(process.base_url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


ENGINES_ACTIVE = "goldenpath_engines_active"
ENGINES_CREATED = "goldenpath_engines_created_total"
RUNS_ACTIVE = "goldenpath_runs_active"
COMPLETED = 'goldenpath_runs_total{outcome="completed"}'
RESUMED = 'goldenpath_run_takeovers_total{outcome="resumed"}'
TAKEN_INTERRUPTED = 'goldenpath_run_takeovers_total{outcome="interrupted"}'


async def holds_nothing(process: ServerProcess) -> bool:
    found = await metrics(process)
    return found[ENGINES_ACTIVE] == 0 and found[RUNS_ACTIVE] == 0


async def kill(process: ServerProcess) -> None:
    process.kill()
    assert await process.wait_exit(10) == -signal.SIGKILL


async def seen_until_dead(ws: Any, into: list[Frame]) -> None:
    """Whatever was already on the wire when the process died counts as seen."""
    with contextlib.suppress(Exception):
        while True:
            into.append(await recv(ws, 5))


async def send_chat(ws: Any, message: str, into: list[Frame], **fields: Any) -> Frame:
    """Send a chat frame; its ack (the user's other runs may stream meanwhile, kept in `into`)."""
    await ws.send(json.dumps({"type": "chat", "message": message, **fields}))
    return await read_until(ws, lambda f: f["type"] == "ack", into)


async def remember(ws: Any, code: int, into: list[Frame]) -> None:
    ack = await send_chat(ws, REMEMBER.format(code=code), into)
    end = await read_until(ws, end_of(ack["run_id"]), into, timeout=30)
    assert end["type"] == "agent_completed", end


async def ask_to_forget(ws: Any, into: list[Frame]) -> tuple[Frame, Frame]:
    """Send FORGET; its ack and the approval_required its run waits on."""
    ack = await send_chat(ws, FORGET, into)
    asked = await read_until(ws, lambda f: f.get("run_id") == ack["run_id"]
                             and f["type"] in {"approval_required", *TERMINAL}, into, timeout=30)
    assert asked["type"] == "approval_required", asked
    assert asked["data"]["tool"] == "delete_notes", asked
    return ack, asked


async def http_chat(user: User, process: ServerProcess, message: str) -> dict[str, Any]:
    """POST /api/chat/message with wait: the run's outcome once it ended (or waits)."""
    status, body = await on(user, process).http("POST", "/api/chat/message",
                                                json={"message": message, "wait": True})
    assert status == 200, body
    return body


async def wait_on_a_question(user: User, process: ServerProcess, code: int) -> tuple[str, Frame]:
    """The user saves a note and asks to forget it, over HTTP: the run id and its question."""
    saved = await http_chat(user, process, REMEMBER.format(code=code))
    assert saved["status"] == "completed", saved
    asked = await http_chat(user, process, FORGET)
    assert asked["status"] == "waiting", asked
    question = [e for e in asked["events"] if e["type"] == "approval_required"]
    assert len(question) == 1 and question[0] == asked["events"][-1], asked["events"]
    return asked["run_id"], question[0]


async def decide(user: User, process: ServerProcess, run_id: str, call_id: str, *,
                 approve: bool = True) -> tuple[int, Any]:
    return await on(user, process).http("POST", f"/api/runs/{run_id}/approvals",
                                        json={"tool_call_id": call_id, "approve": approve})


async def cancel(user: User, process: ServerProcess, run_id: str) -> tuple[int, Any]:
    return await on(user, process).http("POST", f"/api/runs/{run_id}/cancel")


def question_of(asked: Frame) -> dict[str, Any]:
    """The open question as GET /api/runs/{run_id} lists it: approval_required's data and seq."""
    return {**asked["data"], "seq": asked["seq"]}


def open_question(asked: Frame) -> dict[str, Any]:
    """The open question as GET /api/approvals/pending lists it."""
    return {"run_id": asked["run_id"], "thread_id": asked["thread_id"], **question_of(asked)}


async def pending(user: User, process: ServerProcess) -> list[dict[str, Any]]:
    status, body = await on(user, process).http("GET", "/api/approvals/pending")
    assert status == 200, body
    return body["approvals"]


def after(events: list[Frame], asked: Frame) -> list[Frame]:
    """The run's events after its question, checked to follow it with no gap."""
    rest = [e for e in events if e["seq"] > asked["seq"]]
    assert [e["seq"] for e in rest] == list(range(asked["seq"] + 1, asked["seq"] + 1 + len(rest))), \
        [(e["seq"], e["type"]) for e in rest]
    return rest


def approved_and_done(rest: list[Frame], asked: Frame, code: int) -> None:
    """approval_decided (by the user), the tool, the answer: one terminal event, the last."""
    kinds = [e["type"] for e in rest]
    assert rest[0]["type"] == "approval_decided", kinds
    assert rest[0]["data"] == {"tool_call_id": asked["data"]["tool_call_id"], "approved": True, "by": "user"}
    assert kinds[1:3] == ["tool_executing", "tool_completed"], kinds
    assert rest[2]["data"].get("error") is None and rest[2]["data"]["result"]["deleted"] == 1, rest[2]
    assert sum(kind in TERMINAL for kind in kinds) == 1 and kinds[-1] == "agent_completed", kinds
    assert rest[-1]["data"]["text"] == FORGOT.format(code=code), rest[-1]
    assert "run_resumed" not in kinds


def count_sqlite_notes(db_path: Path, text: str) -> int:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return db.execute("SELECT count(*) FROM notes WHERE text = ?", (text,)).fetchone()[0]


class Postgres:
    """The cluster's database, read straight: what was stored, whatever the processes say."""

    def __init__(self, c: Cluster) -> None:
        self.url = c.a.env["GOLDENPATH_DATABASE__URL"].replace("postgresql+asyncpg", "postgresql")

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        db = await asyncpg.connect(self.url)
        try:
            return list(await db.fetch(sql, *args))
        finally:
            await db.close()

    async def terminal_events(self, run_ids: list[str]) -> dict[str, list[str]]:
        rows = await self.fetch("SELECT run_id, type FROM events WHERE run_id = ANY($1::text[]) "
                                "AND type = ANY($2::text[]) ORDER BY run_id, seq", run_ids, sorted(TERMINAL))
        found: dict[str, list[str]] = {run_id: [] for run_id in run_ids}
        for row in rows:
            found[row["run_id"]].append(row["type"])
        return found

    async def notes(self, user_ids: list[str]) -> list[tuple[str, str]]:
        rows = await self.fetch("SELECT user_id, text FROM notes WHERE user_id = ANY($1::text[]) "
                                "ORDER BY user_id", user_ids)
        return [(row["user_id"], row["text"]) for row in rows]


# -- 1. SQLite, one process: SIGKILL while a run waits, restart, decide -----------------------------


async def test_a_waiting_run_outlives_a_sigkill_and_is_decided_after_the_restart(
        procs: ProcessHarness, tmp_path: Path) -> None:
    # A stable instance id: the restart takes back what its predecessor held (test_durable_runs).
    env = procs.env(SERVER__INSTANCE_ID="approvals-1", RUNS__LEASE_TTL_S=1, MODEL__BUILTIN_DELAY_MS=100)
    first = await procs.start_ready(env)
    alice, bob = await register(first.server), await register(first.server)
    seen_a: list[Frame] = []
    seen_b: list[Frame] = []
    async with alice.connect() as ws_a, bob.connect() as ws_b:
        await until_ready(ws_a)
        await until_ready(ws_b)
        await remember(ws_a, 4417, seen_a)
        ack, asked = await ask_to_forget(ws_a, seen_a)
        run_id, thread_id = ack["run_id"], ack["thread_id"]
        assert (await run_status(alice, first, run_id))["status"] == "waiting"
        # A run that is going when the process dies: the restart takes it back, this one not.
        story = (await send_chat(ws_b, STORY, seen_b))["run_id"]
        await read_until(ws_b, lambda f: f.get("run_id") == story and f["type"] == "agent_message_delta",
                         seen_b)
        await kill(first)
        await seen_until_dead(ws_a, seen_a)
        await seen_until_dead(ws_b, seen_b)
    before_kill = events_of(seen_a, run_id)
    assert before_kill[-1] == asked, "the run sent something after its question"
    assert not any(end_of(story)(f) for f in seen_b), "the story ended before the kill"

    second = procs.start(env)
    await second.wait_ready()
    restarted = time.monotonic()
    # Still waiting, still asking: the question came through the restart as stored.
    body = await run_status(alice, second, run_id)
    assert body["status"] == "waiting" and body["pending_approvals"] == [question_of(asked)], body
    assert await pending(alice, second) == [open_question(asked)]
    # The boot took back the story (a lease of this instance's) and only that.
    assert (await metrics(second))[RESUMED] == 1
    last_b = [f for f in seen_b if "cursor" in f][-1]
    async with on(bob, second).connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "resume", "cursor": last_b["cursor"]}))
        await read_until(ws, end_of(story), seen_b, timeout=60)
    story_events = events_of(seen_b, story)
    assert_complete(story_events, "agent_completed")
    assert sum(e["type"] == "run_resumed" for e in story_events) == 1
    # The story streamed for seconds after the restart (its 32 pieces 100 ms apart, again from the
    # step it was in): the housekeeper swept many times meanwhile (every lease_ttl_s / 3, ~0.33 s)
    # and left the waiting run alone.
    swept_for = time.monotonic() - restarted
    print(f"the restarted process ran {swept_for:.2f} s before the decision came")
    assert swept_for > 1.0, swept_for
    found = await metrics(second)
    assert (found[RESUMED], found[TAKEN_INTERRUPTED]) == (1, 0)
    body = await run_status(alice, second, run_id)
    assert body["status"] == "waiting" and body["pending_approvals"] == [question_of(asked)], body
    await eventually(lambda: holds_nothing(second), what="no engine and no run held on the restart")

    # The decision, over a new socket to the restarted process.
    live: list[Frame] = []
    async with on(alice, second).connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "approval", "run_id": run_id,
                                  "tool_call_id": asked["data"]["tool_call_id"], "approve": True}))
        await read_until(ws, end_of(run_id), live, timeout=30)
        await drain(ws, live)  # a second terminal event, or anything after it, would show here
    rest = after(events_of(live, run_id), asked)
    approved_and_done(rest, asked, 4417)
    assert len(events_of(live, run_id)) == len(rest), "events from before the question came again"

    # The stored log: one run, seq 1..n across the restart, never resumed, one terminal event.
    stored: list[Frame] = []
    async with on(alice, second).connect() as ws:
        await until_ready(ws)
        await ws.send(json.dumps({"type": "resume", "run_id": run_id, "after_seq": 0}))
        await read_until(ws, end_of(run_id), stored)
    log = events_of(stored, run_id)
    assert_complete(log, "agent_completed")
    assert "run_resumed" not in [e["type"] for e in log]
    assert log == before_kill + rest  # what each socket saw is exactly what is stored

    body = await run_status(alice, second, run_id)
    assert body["status"] == "completed" and "pending_approvals" not in body, body
    assert await pending(alice, second) == []
    assert count_sqlite_notes(tmp_path / "gp.db", NOTE.format(code=4417)) == 0
    status, messages = await on(alice, second).http("GET", f"/api/threads/{thread_id}/messages")
    assert status == 200, messages
    assert [m["text"] for m in messages["messages"] if m["role"] == "assistant"] == [FORGOT.format(code=4417)]
    assert (await metrics(second))[RESUMED] == 1
    assert await second.stop() == 0


# -- 2. PostgreSQL + Redis: asked on A, decided on B ---------------------------------------------------


async def test_asked_on_a_decided_on_b_the_run_goes_on_on_b_and_a_sees_it_all(
        procs: ProcessHarness, tmp_path: Path) -> None:
    async with cluster(procs, tmp_path, MODEL__BUILTIN_DELAY_MS=20) as c:
        alice = await register(c.a.server)
        frames: list[Frame] = []
        ws = await connected(on(alice, c.a))
        try:
            await remember(ws, 4417, frames)
            ack, asked = await ask_to_forget(ws, frames)
            run_id = ack["run_id"]
            await eventually(lambda: holds_nothing(c.a), what="A holds no engine while the run waits")
            assert (await run_status(alice, c.b, run_id))["status"] == "waiting"
            status, body = await decide(alice, c.b, run_id, asked["data"]["tool_call_id"])
            assert status == 202, body
            assert body == {"run_id": run_id, "tool_call_id": asked["data"]["tool_call_id"], "approved": True,
                            "status": "running"}
            await read_until(ws, end_of(run_id), frames, timeout=30)
            await drain(ws, frames)
        finally:
            await ws.close()
        events = events_of(frames, run_id)
        assert_complete(events, "agent_completed")  # every event on A's socket once, seq 1..n
        approved_and_done(after(events, asked), asked, 4417)
        # Where it ran: A made the engines of the two messages, B the one that went on.
        a, b = await metrics(c.a), await metrics(c.b)
        assert (a[ENGINES_CREATED], a[COMPLETED]) == (2, 1), a
        assert (b[ENGINES_CREATED], b[COMPLETED]) == (1, 1), b
        for process in (c.a, c.b):
            assert (await run_status(alice, process, run_id))["status"] == "completed"
        assert await Postgres(c).notes([alice.user_id]) == []
        assert (await Postgres(c).terminal_events([run_id])) == {run_id: ["agent_completed"]}


USERS = 20


async def test_twenty_users_wait_on_a_with_no_engine_and_all_are_decided_on_b_at_once(
        procs: ProcessHarness, tmp_path: Path) -> None:
    async with cluster(procs, tmp_path, MODEL__BUILTIN_DELAY_MS=5) as c:
        users = await asyncio.gather(*(register(c.a.server) for _ in range(USERS)))
        codes = [5000 + i for i in range(USERS)]
        asked = await asyncio.gather(*(wait_on_a_question(user, c.a, code)
                                       for user, code in zip(users, codes, strict=True)))
        run_ids = [run_id for run_id, _ in asked]
        sockets = await asyncio.gather(*(connected(on(user, c.a)) for user in users))
        frames: list[list[Frame]] = [[] for _ in users]
        try:
            await eventually(lambda: holds_nothing(c.a), what="A holds nothing while twenty runs wait")
            a = await metrics(c.a)
            assert a[ENGINES_CREATED] == 2 * USERS, a
            for user, (_, question) in zip(users, asked, strict=True):
                assert await pending(user, c.b) == [open_question(question)]

            # A's engines, sampled until every run ended on B: never one.
            sampled: list[float] = []
            done = asyncio.Event()

            async def sample_a() -> None:
                while not done.is_set():
                    sampled.append((await metrics(c.a))[ENGINES_ACTIVE])
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), 0.05)

            sampler = asyncio.create_task(sample_a())
            try:
                began = time.monotonic()
                decided = await asyncio.gather(*(
                    decide(user, c.b, run_id, question["data"]["tool_call_id"])
                    for user, (run_id, question) in zip(users, asked, strict=True)))
                assert [status for status, _ in decided] == [202] * USERS, decided
                await asyncio.gather(*(read_until(ws, end_of(run_id), frames[i], timeout=60)
                                       for i, (ws, run_id) in enumerate(zip(sockets, run_ids, strict=True))))
                took = time.monotonic() - began
            finally:
                done.set()
                await sampler
            await asyncio.gather(*(drain(ws, frames[i]) for i, ws in enumerate(sockets)))
        finally:
            for ws in sockets:
                await ws.close()
        print(f"{USERS} waiting runs decided on B at once: all ended on A's sockets within {took:.2f} s; "
              f"A's engines sampled {len(sampled)} times meanwhile")
        assert sampled and set(sampled) == {0}, sampled
        for i, (run_id, question) in enumerate(asked):
            assert not [f for f in frames[i] if f.get("run_id") not in (None, run_id)]  # own run only
            approved_and_done(after(events_of(frames[i], run_id), question), question, codes[i])
        a, b = await metrics(c.a), await metrics(c.b)
        assert (a[ENGINES_ACTIVE], a[ENGINES_CREATED], a[COMPLETED]) == (0, 2 * USERS, USERS), a
        assert (b[ENGINES_CREATED], b[COMPLETED]) == (USERS, USERS), b
        db = Postgres(c)
        assert await db.terminal_events(run_ids) == {run_id: ["agent_completed"] for run_id in run_ids}
        assert await db.notes([user.user_id for user in users]) == []


async def test_a_killed_while_its_run_waits_b_takes_the_decision_at_once(
        procs: ProcessHarness, tmp_path: Path) -> None:
    # A long lease: were the waiting run leased, B could not go on with it within the test.
    async with cluster(procs, tmp_path, MODEL__BUILTIN_DELAY_MS=5, RUNS__LEASE_TTL_S=60) as c:
        alice = await register(c.a.server)
        run_id, asked = await wait_on_a_question(alice, c.a, 4417)
        await kill(c.a)
        assert await pending(alice, c.b) == [open_question(asked)]
        frames: list[Frame] = []
        ws = await connected(on(alice, c.b))
        try:
            began = time.monotonic()
            status, body = await decide(alice, c.b, run_id, asked["data"]["tool_call_id"])
            assert status == 202, body
            await read_until(ws, end_of(run_id), frames, timeout=30)
            took = time.monotonic() - began
            await drain(ws, frames)
        finally:
            await ws.close()
        print(f"A killed; the decision on B ended the run in {took:.2f} s")
        approved_and_done(after(events_of(frames, run_id), asked), asked, 4417)
        b = await metrics(c.b)
        assert (b[RESUMED], b[TAKEN_INTERRUPTED], b[COMPLETED]) == (0, 0, 1), b
        assert (await run_status(alice, c.b, run_id))["status"] == "completed"
        assert await Postgres(c).terminal_events([run_id]) == {run_id: ["agent_completed"]}


# -- 3. races between the processes ----------------------------------------------------------------

RACES = 10


async def waiting_users(c: Cluster, count: int) -> tuple[list[User], list[tuple[str, Frame]], list[Any]]:
    """`count` users, each with a run waiting on A and a socket on A."""
    users = await asyncio.gather(*(register(c.a.server) for _ in range(count)))
    asked = await asyncio.gather(*(wait_on_a_question(user, c.a, 7000 + i) for i, user in enumerate(users)))
    sockets = await asyncio.gather(*(connected(on(user, c.a)) for user in users))
    return list(users), list(asked), list(sockets)


async def to_the_end(sockets: list[Any], run_ids: list[str]) -> list[list[Frame]]:
    """Each socket's frames until its run ended, and then until it was quiet (a second terminal
    event, if any, is caught)."""
    frames: list[list[Frame]] = [[] for _ in sockets]
    await asyncio.gather(*(read_until(ws, end_of(run_id), frames[i], timeout=60)
                           for i, (ws, run_id) in enumerate(zip(sockets, run_ids, strict=True))))
    await asyncio.gather(*(drain(ws, frames[i], quiet=0.5) for i, ws in enumerate(sockets)))
    return frames


STATUS_OF = {"agent_completed": "completed", "agent_cancelled": "cancelled", "agent_error": "failed"}


async def test_a_decision_racing_a_cancel_on_the_other_process_ends_the_run_once(
        procs: ProcessHarness, tmp_path: Path) -> None:
    async with cluster(procs, tmp_path, MODEL__BUILTIN_DELAY_MS=5) as c:
        users, asked, sockets = await waiting_users(c, RACES)
        run_ids = [run_id for run_id, _ in asked]
        try:
            await eventually(lambda: holds_nothing(c.a), what="A holds nothing while the runs wait")

            async def race(i: int) -> tuple[tuple[int, Any], tuple[int, Any]]:
                # Half decide on B and cancel on A, half the other way round.
                deciding, cancelling = (c.b, c.a) if i % 2 == 0 else (c.a, c.b)
                run_id, question = asked[i]
                return await asyncio.gather(
                    decide(users[i], deciding, run_id, question["data"]["tool_call_id"]),
                    cancel(users[i], cancelling, run_id))

            results = await asyncio.gather(*(race(i) for i in range(RACES)))
            frames = await to_the_end(sockets, run_ids)
        finally:
            for ws in sockets:
                await ws.close()
        db = Postgres(c)
        stored_ends = await db.terminal_events(run_ids)
        notes = {user_id for user_id, _ in await db.notes([user.user_id for user in users])}
        outcomes: Counter[str] = Counter()
        for i, ((decided, decision), (cancelled, cancelling)) in enumerate(results):
            run_id, question = asked[i]
            way = "decided on B, cancelled on A" if i % 2 == 0 else "decided on A, cancelled on B"
            rest = after(events_of(frames[i], run_id), question)
            kinds = [e["type"] for e in rest]
            ends = [kind for kind in kinds if kind in TERMINAL]
            assert len(ends) == 1 and kinds[-1] == ends[0], (i, kinds)
            assert stored_ends[run_id] == ends, (i, stored_ends[run_id], kinds)
            assert cancelled == 202, cancelling
            body = await run_status(users[i], c.a, run_id)
            assert body["status"] == STATUS_OF[ends[0]], (i, body, kinds)
            assert (await run_status(users[i], c.b, run_id))["status"] == body["status"]
            if decided == 409:  # the cancel claimed the waiting run first: nothing else happened
                assert decision["error"]["code"] == "conflict", decision
                assert kinds == ["agent_cancelled"] and rest[0]["data"] == {"reason": "user"}, (i, kinds)
                assert users[i].user_id in notes, "the tool ran for a decision that lost"
                outcomes[f"cancel won: decision 409 ({way})"] += 1
                continue
            # The decision claimed it: the cancel stopped the run before it went on (it ends with
            # no approval_decided: the decision is only in its checkpoint), or mid-run, or came
            # too late.
            assert decided == 202, decision
            if kinds == ["agent_cancelled"]:
                assert rest[0]["data"] == {"reason": "user"}, rest[0]
                assert users[i].user_id in notes, "the tool ran, yet no event says so"
                outcomes[f"decision claimed, cancelled before it went on ({way})"] += 1
                continue
            assert rest[0]["type"] == "approval_decided" and rest[0]["data"]["by"] == "user", (i, kinds)
            if "tool_completed" in kinds:
                assert (users[i].user_id in notes) is False, "the tool completed, yet the note is there"
            if ends == ["agent_completed"]:
                approved_and_done(rest, question, 7000 + i)
                outcomes[f"decision won: completed, cancel too late ({way})"] += 1
            else:
                assert ends == ["agent_cancelled"] and rest[-1]["data"] == {"reason": "user"}, (i, kinds)
                outcomes[f"decision won: then cancelled mid-run ({way})"] += 1
        print(f"{RACES} decision/cancel races: {dict(outcomes)}")


async def test_two_decisions_racing_on_two_processes_one_wins(procs: ProcessHarness, tmp_path: Path) -> None:
    async with cluster(procs, tmp_path, MODEL__BUILTIN_DELAY_MS=5) as c:
        users, asked, sockets = await waiting_users(c, RACES)
        run_ids = [run_id for run_id, _ in asked]
        try:
            async def race(i: int) -> list[tuple[int, Any]]:
                # An approval on one process, a denial on the other, at once.
                run_id, question = asked[i]
                call_id = question["data"]["tool_call_id"]
                approving, denying = (c.a, c.b) if i % 2 == 0 else (c.b, c.a)
                return list(await asyncio.gather(decide(users[i], approving, run_id, call_id, approve=True),
                                                 decide(users[i], denying, run_id, call_id, approve=False)))

            results = await asyncio.gather(*(race(i) for i in range(RACES)))
            frames = await to_the_end(sockets, run_ids)
        finally:
            for ws in sockets:
                await ws.close()
        db = Postgres(c)
        stored_ends = await db.terminal_events(run_ids)
        notes = {user_id for user_id, _ in await db.notes([user.user_id for user in users])}
        approvals_won = 0
        for i, ((approve_status, approve_body), (deny_status, deny_body)) in enumerate(results):
            run_id, question = asked[i]
            assert sorted([approve_status, deny_status]) == [202, 409], (approve_body, deny_body)
            loser = deny_body if approve_status == 202 else approve_body
            assert loser["error"]["code"] == "conflict", loser
            approved = approve_status == 202
            approvals_won += approved
            rest = after(events_of(frames[i], run_id), question)
            decisions = [e for e in rest if e["type"] == "approval_decided"]
            assert len(decisions) == 1 and decisions[0]["data"]["approved"] is approved, (i, decisions)
            assert stored_ends[run_id] == ["agent_completed"], (i, stored_ends[run_id])
            if approved:
                approved_and_done(rest, question, 7000 + i)
                assert users[i].user_id not in notes
            else:
                kinds = [e["type"] for e in rest]
                assert "tool_executing" not in kinds and rest[-1]["type"] == "agent_completed", kinds
                assert rest[-1]["data"]["text"] == DENIED_ANSWER
                assert users[i].user_id in notes
            assert (await run_status(users[i], c.b, run_id))["status"] == "completed"
        print(f"{RACES} approve/deny races: the approval won {approvals_won}, "
              f"the denial {RACES - approvals_won}")
