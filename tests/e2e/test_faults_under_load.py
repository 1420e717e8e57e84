"""Faults under load: two real `goldenpath serve` processes, 100 users chatting in a closed loop,
and one fault a few seconds in: SIGKILL of a process (restarted on its port, so its runs are
taken back at boot), the private Redis killed and restarted, or a private PostgreSQL cluster
stopped for 5 s and started again.

The clients behave as real ones must: a socket that drops reconnects (to any living process) and
resumes by cursor; a chat answered `server_not_ready`, or an HTTP 503, is sent again later with
the same client_message_id. Afterwards, for every message the server acknowledged (an `ack` frame
or a 202): one run per client_message_id, exactly one terminal event and it is the last, seq
gapless 1..n (live on each socket, and in the log through a `resume` by run), every run final
within one lease TTL of the service's return (with a margin for a busy two-core machine), no
frame of another user on any socket, never a 500 or a close with 1011, no traceback in the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import websockets

from tests.e2e.client import TERMINAL, register
from tests.e2e.cluster import Cluster, Frame, cluster
from tests.e2e.load_client import ACK_DEADLINE_S, Client, Fleet
from tests.e2e.processes import (
    PostgresCluster,
    ProcessHarness,
    ServerProcess,
    private_postgres,
    procs_fixture,  # noqa: F401  (the `procs` fixture)
)

USERS = 100
LEASE_TTL_S = 2.0
DELAY_MS = 20  # runs last ~0.2-0.6 s
LOAD_BEFORE_S = 4.0  # the fault lands this long into the load
LOAD_AFTER_S = 4.0  # and the load goes on this long after the service is back
MARGIN_S = 4.0  # on top of one lease TTL: a busy two-core machine, with the clients on it too
SETTLE_S = 4 * LEASE_TTL_S + 10  # the deadline for "no run unfinished" once the load stopped
FINAL = {"completed": "agent_completed", "failed": "agent_error", "cancelled": "agent_cancelled"}
EXPECTED_CLOSES = {"sigkill": {1006, 1001, 1013}, "redis": set(), "postgres": set()}


# -- the faults: each returns once the service is back (monotonic time) ------------------------


@dataclasses.dataclass
class Setup:
    cluster: Cluster
    fleet: Fleet
    postgres: PostgresCluster | None


async def kill_a_process(setup: Setup) -> float:
    c, victim = setup.cluster, setup.cluster.b
    victim.kill()
    await victim.wait_exit(10)
    restarted = c.procs.start(victim.env, port=victim.port)  # same port: same instance id
    setup.fleet.processes[1] = restarted
    await restarted.wait_ready(30)
    return time.monotonic()


async def kill_redis(setup: Setup) -> float:
    redis = setup.cluster.redis
    await redis.kill()
    await asyncio.sleep(2)
    await redis.start()
    return time.monotonic()


async def stop_postgres(setup: Setup) -> float:
    assert setup.postgres is not None
    await setup.postgres.stop("fast")
    await asyncio.sleep(5)
    await setup.postgres.start()
    return time.monotonic()


FAULTS: dict[str, Callable[[Setup], Awaitable[float]]] = {
    "sigkill": kill_a_process, "redis": kill_redis, "postgres": stop_postgres}


@contextlib.asynccontextmanager
async def setup_for(fault: str, procs: ProcessHarness, tmp_path: Path) -> AsyncIterator[Setup]:
    settings = {"RUNS__LEASE_TTL_S": LEASE_TTL_S, "MODEL__BUILTIN_DELAY_MS": DELAY_MS,
                "SECURITY__MESSAGES_PER_MINUTE": 100_000}
    async with contextlib.AsyncExitStack() as stack:
        postgres = None
        url = None
        if fault == "postgres":  # never the shared server: this one is stopped
            postgres = await stack.enter_async_context(private_postgres())
            url = postgres.url("goldenpath")
        try:
            c = await stack.enter_async_context(cluster(procs, tmp_path, url, **settings))
            yield Setup(cluster=c, fleet=Fleet([c.a, c.b]), postgres=postgres)
        except BaseException:
            if postgres is not None:
                print(f"--- postgres log ---\n{postgres.log()[-3000:]}")
            raise


# -- reading the database directly --------------------------------------------------------------


def dsn_of(process: ServerProcess) -> str:
    return process.env["GOLDENPATH_DATABASE__URL"].replace("postgresql+asyncpg://", "postgresql://")


async def unfinished(dsn: str, among: set[str] | None = None) -> set[str]:
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await connection.fetch("SELECT id FROM runs WHERE status IN ('running', 'queued')")
    finally:
        await connection.close()
    found = {row["id"] for row in rows}
    return found if among is None else found & among


async def all_runs(dsn: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        return await connection.fetch("SELECT id, user_id, client_message_id, status, owner, error FROM runs")
    finally:
        await connection.close()


async def settled(dsn: str, among: set[str] | None, deadline_s: float) -> float:
    """Seconds until none of `among` (None: no run at all) is running or queued."""
    began = time.monotonic()
    left: set[str] = set()
    while time.monotonic() - began < deadline_s:
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            left = await unfinished(dsn, among)
            if not left:
                return time.monotonic() - began
        await asyncio.sleep(0.1)
    raise AssertionError(f"{len(left)} runs still running or queued {deadline_s} s on: {sorted(left)[:10]}")


async def ends_of(dsn: str, among: set[str], deadline_s: float) -> dict[str, tuple[float, dict[str, Any]]]:
    """When (seconds from now) each of `among` was first seen final, and its row then."""
    began = time.monotonic()
    ends: dict[str, tuple[float, dict[str, Any]]] = {}
    while len(ends) < len(among) and time.monotonic() - began < deadline_s:
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            connection = await asyncpg.connect(dsn, timeout=5)
            try:
                rows = await connection.fetch(
                    "SELECT id, status, owner, error, created_at, finished_at, lease_expires_at, lease_epoch "
                    "FROM runs WHERE id = ANY($1::text[])", [r for r in among if r not in ends])
            finally:
                await connection.close()
            now = time.monotonic() - began
            for row in rows:
                if row["status"] in FINAL:
                    ends[row["id"]] = (now, dict(row))
        await asyncio.sleep(0.1)
    return ends


# -- the replay from the log, and the checks ---------------------------------------------------


async def replay(client: Client, process: ServerProcess, run_ids: list[str]) -> dict[str, list[Frame]]:
    """Each run's events from the log: a `resume` by run with after_seq 0 on a new socket."""
    frames: list[Frame] = []
    async with websockets.connect(process.server.ws_url, additional_headers=client.user.auth,
                                  open_timeout=10, max_size=2**22, max_queue=None) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
        for run_id in run_ids:
            await ws.send(json.dumps({"type": "resume", "run_id": run_id, "after_seq": 0}))
        ends: set[str] = set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                while len(ends) < len(run_ids):
                    frame = json.loads(await ws.recv())
                    frames.append(frame)
                    if frame.get("type") in TERMINAL:
                        ends.add(frame["run_id"])
        with contextlib.suppress(TimeoutError):  # anything after a terminal event shows up here
            while True:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
    unexpected = [f for f in frames if f.get("run_id") not in run_ids]
    assert not unexpected, f"user {client.index}: a replay by run carried other frames: {unexpected[:3]}"
    by_run: dict[str, list[Frame]] = {run_id: [] for run_id in run_ids}
    for frame in frames:
        by_run[frame["run_id"]].append(frame)
    return by_run


def log_faults(run_id: str, events: list[Frame]) -> list[str]:
    seqs = [e["seq"] for e in events]
    found = []
    if seqs != list(range(1, len(seqs) + 1)):
        found.append(f"{run_id}: logged seqs not 1..n: {seqs}")
    terminals = [e["type"] for e in events if e["type"] in TERMINAL]
    if len(terminals) != 1 or not events or events[-1]["type"] not in TERMINAL:
        found.append(f"{run_id}: {len(terminals)} terminal events in the log {terminals}, "
                     f"types {[e['type'] for e in events]}")
    return found


def live_faults(client: Client, run_id: str, logged: list[Frame]) -> list[str]:
    """Each socket saw the run's events in order, each once, consecutive; each one is what the log holds."""
    found = []
    by_seq = {e["seq"]: e for e in logged}
    live_terminals: set[int] = set()
    for number, (name, frames) in enumerate(client.sockets):
        seen = [f for f in frames if f.get("run_id") == run_id and "seq" in f]
        seqs = [e["seq"] for e in seen]
        if seqs and seqs != list(range(seqs[0], seqs[0] + len(seqs))):
            found.append(f"{run_id}: socket {number} on {name} saw seqs {seqs}")
        for event in seen:
            stored = by_seq.get(event["seq"])
            if stored is None or (stored["type"], stored["cursor"]) != (event["type"], event["cursor"]):
                found.append(f"{run_id}: socket {number} on {name} saw {event['type']} seq {event['seq']}, "
                             f"the log holds {stored and stored['type']}")
            if event["type"] in TERMINAL:
                live_terminals.add(event["seq"])
    if len(live_terminals) > 1:
        found.append(f"{run_id}: terminal events at seqs {sorted(live_terminals)} reached the sockets")
    return found


# -- the test ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Observed:
    """What one case saw, for the checks and the report."""

    fault: str
    clients: list[Client]
    outage_s: float = 0.0
    load_s: float = 0.0
    pending: set[str] = dataclasses.field(default_factory=set)  # unfinished when the service came back
    ends: dict[str, tuple[float, dict[str, Any]]] = dataclasses.field(default_factory=dict)
    settle_s: float = 0.0  # from the end of the load to no run unfinished
    logs: dict[str, list[Frame]] = dataclasses.field(default_factory=dict)  # the log, run by run
    statuses: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    stored: list[asyncpg.Record] = dataclasses.field(default_factory=list)
    logs_text: dict[str, str] = dataclasses.field(default_factory=dict)

    def report(self) -> str:
        terminals = sum(1 for events in self.logs.values() for e in events if e["type"] in TERMINAL)
        outcomes = Counter((e["type"], e["data"].get("code") or e["data"].get("reason"))
                           for events in self.logs.values() for e in events[-1:])
        retries: Counter[str] = sum((client.retries for client in self.clients), Counter())
        closes = Counter(code for client in self.clients for _, code, _ in client.closes)
        return (f"[{self.fault}] load {self.load_s:.1f} s, the fault {self.outage_s:.1f} s; "
                f"{sum(len(c.acks) for c in self.clients)} messages acknowledged, "
                f"{sum(len(c.runs) for c in self.clients)} runs acknowledged, {len(self.stored)} stored, "
                f"{terminals} terminal events in the log; {len(self.pending)} unfinished at the return, "
                f"ended after {sorted(round(at, 1) for at, _ in self.ends.values())} s; no run unfinished "
                f"{self.settle_s:.2f} s after the load; outcomes {dict(outcomes)}; closes by the server "
                f"{dict(closes)}; retries {dict(retries)}; "
                f"late terminal events {sum(len(c.late) for c in self.clients)}")


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_every_acknowledged_message_ends_once_under_a_fault(
        fault: str, procs: ProcessHarness, tmp_path: Path) -> None:
    async with setup_for(fault, procs, tmp_path) as setup:
        c = setup.cluster
        dsn = dsn_of(c.a)
        connector, timeout = aiohttp.TCPConnector(limit=200), aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            homes = [(c.a, c.b)[i % 2].server for i in range(USERS)]
            users = await asyncio.gather(*(register(home, f"load_{i:03d}_{secrets.token_hex(3)}")
                                           for i, home in enumerate(homes)))
            seen = Observed(fault, [Client(i, user, setup.fleet, session) for i, user in enumerate(users)])
            await asyncio.gather(*(client.open() for client in seen.clients))
            await load_through(setup, seen, dsn)
            await asyncio.gather(*(client.leave() for client in seen.clients))
            await read_back(setup.fleet, seen, session)
        seen.stored = await all_runs(dsn)
        seen.logs_text = {p.name: p.log() for p in c.procs.processes}
    print(f"\n{seen.report()}")
    broken = promises_broken(seen)
    assert not broken, f"{len(broken)} promises broken under {fault}:\n" + "\n".join(broken)


async def load_through(setup: Setup, seen: Observed, dsn: str) -> None:
    """The closed loops, the fault a few seconds in, more load, then until no run is unfinished."""
    stop = asyncio.Event()
    began = time.monotonic()
    loops = [asyncio.create_task(client.chat_until(stop)) for client in seen.clients]
    try:
        await asyncio.sleep(LOAD_BEFORE_S)
        at_fault = time.monotonic()
        back = await FAULTS[seen.fault](setup)
        seen.outage_s = back - at_fault
        seen.pending = await unfinished(dsn)
        seen.ends = await ends_of(dsn, seen.pending, LEASE_TTL_S + MARGIN_S + 10)
        await asyncio.sleep(max(0.0, LOAD_AFTER_S - (time.monotonic() - back)))
        stop.set()
        await asyncio.wait_for(asyncio.gather(*loops), ACK_DEADLINE_S + 4 * LEASE_TTL_S + 20)
    finally:
        stop.set()
        for loop in loops:
            loop.cancel()
    seen.load_s = time.monotonic() - began
    seen.settle_s = await settled(dsn, None, SETTLE_S)


async def read_back(fleet: Fleet, seen: Observed, session: aiohttp.ClientSession) -> None:
    """Each acknowledged run's events from the log, and its status, from the living processes in turn."""
    living = fleet.living(0)
    replays = await asyncio.gather(*(replay(client, living[client.index % len(living)], list(client.runs))
                                     for client in seen.clients))
    for found in replays:
        seen.logs.update(found)
    gate = asyncio.Semaphore(40)

    async def status_of(client: Client, run_id: str) -> None:
        process = living[(client.index + 1) % len(living)]
        async with gate, session.get(f"{process.base_url}/api/runs/{run_id}", headers=client.user.auth) as r:
            seen.statuses[run_id] = {"http": r.status, **(await r.json())}

    await asyncio.gather(*(status_of(client, run_id) for client in seen.clients for run_id in client.runs))


def promises_broken(seen: Observed) -> list[str]:
    """Every check, each a line when it fails, so that one run reports all of them."""
    fault, clients, stored, logs = seen.fault, seen.clients, seen.stored, seen.logs
    broken: list[str] = []
    problems = [f"user {client.index}: {p}" for client in clients for p in client.problems]
    if problems:  # a 500, a close with 1011, an error frame, a message never acknowledged
        broken.append(f"{len(problems)} client problems: {problems[:10]}")
    # One run per client_message_id.
    twice = {cmid: runs for client in clients for cmid, runs in client.acks.items() if len(runs) != 1}
    if twice:
        broken.append(f"client_message_ids acknowledged with several runs: {twice}")
    by_user: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for row in stored:
        by_user[row["user_id"]].append(row)
    doubled = [(user, cmid) for user, rows in by_user.items()
               for cmid, n in Counter(row["client_message_id"] for row in rows).items() if n > 1]
    if doubled:
        broken.append(f"client_message_ids stored with several runs: {doubled[:10]}")
    # Every acknowledged run: exactly one terminal event, the last; gapless; live == log.
    faults = [f for client in clients for run_id in client.runs
              for f in log_faults(run_id, logs[run_id]) + live_faults(client, run_id, logs[run_id])]
    if faults:
        broken.append(f"{len(faults)} event faults: {faults[:10]}")
    # GET /api/runs/{id}: final, and the same as the terminal event.
    wrong = [(run_id, s) for run_id, s in seen.statuses.items()
             if s["http"] != 200 or not logs[run_id] or FINAL.get(s["status"]) != logs[run_id][-1]["type"]]
    if wrong:
        broken.append(f"{len(wrong)} runs whose status disagrees with their terminal event: {wrong[:10]}")
    left = [row["id"] for row in stored if row["status"] not in FINAL]
    if left:
        broken.append(f"runs left unfinished: {left[:10]}")
    # No frame of another user on any socket.
    secrets_of = {client.user.user_id: client.secret for client in clients}
    for client in clients:
        own = {row["id"] for row in by_user[client.user.user_id]}
        wire = [f for _, frames in client.sockets for f in frames]
        foreign = [f for f in wire if "run_id" in f and f["run_id"] not in own]
        text = json.dumps(wire)
        leaked = [u for u, s in secrets_of.items() if u != client.user.user_id and s in text]
        if foreign or leaked:
            broken.append(f"user {client.index} got frames of others' runs {foreign[:3]} "
                          f"or the secrets of {leaked[:3]}")
    # Sockets: never 1011 (a client problem above); an outage of a service keeps them open.
    closes = [cl for client in clients for cl in client.closes if cl[1] not in EXPECTED_CLOSES[fault]]
    if closes:
        broken.append(f"{len(closes)} sockets closed by the server: {closes[:10]}")
    # Every run unfinished when the service came back ended within one lease TTL (and a margin).
    slow = sorted(((at, row) for at, row in seen.ends.values() if at > LEASE_TTL_S + MARGIN_S),
                  key=lambda pair: pair[0])
    if len(seen.ends) < len(seen.pending) or slow:
        never = len(seen.pending) - len(seen.ends)
        broken.append(f"{never} of {len(seen.pending)} runs unfinished at the return never ended; "
                      f"{len(slow)} ended more than {LEASE_TTL_S + MARGIN_S} s after it: "
                      + "; ".join(f"{at:.2f} s {row}" for at, row in slow[:5]))
    if fault == "postgres":  # docs/architecture.md: an outage is a warning with its count, then one line
        silent = [name for name, text in seen.logs_text.items()
                  if "the database is away" not in text or "the database answers again" not in text]
        if silent:
            broken.append(f"{silent}: no 'the database is away ... writes failed' and 'the database "
                          "answers again' lines from the committer for the outage")
    if tracebacks := tracebacks_in(seen.logs_text):
        broken.append(f"tracebacks in the servers' logs, by the line before each: {tracebacks}")
    return broken


def tracebacks_in(logs: dict[str, str]) -> dict[str, Counter[str]]:
    """Per process, the log line each traceback follows (time and ids cut off), counted; a chained
    traceback ("The above exception was the direct cause ...") counts with the one it belongs to."""
    found: dict[str, Counter[str]] = {}
    for name, text in logs.items():
        lines = text.splitlines()
        heads = [lines[i - 1].split(" [request_id")[0].split(" | ", 1)[-1][:160]
                 for i, line in enumerate(lines) if line.startswith("Traceback") and i and lines[i - 1]]
        if heads:
            found[name] = Counter(heads)
    return found
