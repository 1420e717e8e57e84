"""The load process: drives goldenpath or bare servers over loopback and prints one JSON line.

Run by bench/__main__.py as its own process, so the servers under test have their own
interpreters and cores. Modes: record (one run's frames, the bare server's template),
throughput, memory, soak. `--url` takes one URL or several, comma-separated: user i then talks
to URL i mod n (registration included), so the load is split evenly across the processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
import uuid
from pathlib import Path

import aiohttp

MESSAGE = "What is 17 * 23?"
PASSWORD = "bench-password-123"  # noqa: S105 - a throwaway user of a throwaway database
TERMINAL = {"agent_completed", "agent_error", "agent_cancelled"}
LOGIN_CONCURRENCY = 16  # registrations + logins in flight (each one an argon2 hash on the server)
OPEN_CONCURRENCY = 64  # WebSocket handshakes in flight (the server's listen backlog is 128)
RUN_TIMEOUT_S = 120.0  # a run not ended by then counts as an error and ends that user's loop
SETTLE_S = 10.0  # the soak's last sample waits up to this for the server to go back to idle
METRICS = ("goldenpath_engines_active", "goldenpath_event_loop_tasks")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def session(*, force_close: bool = False) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=force_close),
                                 timeout=aiohttp.ClientTimeout(total=None))


async def login_users(urls: list[str], count: int, prefix: str) -> list[str]:
    """Register and log in `count` users, user i on urls[i % len(urls)]; returns their access tokens.

    Its own HTTP session, closed before returning: no idle keep-alive connection (nor its server
    task) is left behind to blur what the rows and samples measure.
    """
    gate = asyncio.Semaphore(LOGIN_CONCURRENCY)

    async def one(s: aiohttp.ClientSession, i: int) -> str:
        url = urls[i % len(urls)]
        body = {"username": f"{prefix}{i}", "password": PASSWORD}
        async with gate:
            async with s.post(f"{url}/api/auth/register", json=body) as r:
                if r.status != 201:
                    raise RuntimeError(f"register {r.status}: {await r.text()}")
            async with s.post(f"{url}/api/auth/login", json=body) as r:
                if r.status != 200:
                    raise RuntimeError(f"login {r.status}: {await r.text()}")
                return (await r.json())["access_token"]

    async with session() as s:
        return list(await asyncio.gather(*(one(s, i) for i in range(count))))


async def tokens_for(args, prefix: str) -> list[str | None]:
    """One token per user for goldenpath; the bare server takes none."""
    if args.kind == "bare":
        return [None] * args.users
    return await login_users(args.urls, args.users, f"{prefix}{uuid.uuid4().hex[:8]}_")


async def open_socket(s: aiohttp.ClientSession, url: str, token: str | None
                      ) -> aiohttp.ClientWebSocketResponse:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ws = await s.ws_connect(f"{url}/ws", headers=headers, max_msg_size=0, heartbeat=None)
    first = await ws.receive_json()
    if first.get("type") != "ready":
        raise RuntimeError(f"expected ready, got {first}")
    return ws


async def open_sockets(s: aiohttp.ClientSession, urls: list[str], tokens: list[str | None]
                       ) -> list[aiohttp.ClientWebSocketResponse]:
    """Socket i on urls[i % len(urls)] with tokens[i], at most OPEN_CONCURRENCY handshakes at once:
    a burst of 1,000 SYNs overflows the listen backlog and the kernel retries them a second later."""
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one(i: int, token: str | None) -> aiohttp.ClientWebSocketResponse:
        async with gate:
            return await open_socket(s, urls[i % len(urls)], token)

    return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(tokens))))


async def one_run(ws: aiohttp.ClientWebSocketResponse) -> tuple[float, float, list[dict], bool]:
    """Send the message; returns (to agent_started, to terminal, frames, ok)."""
    frames: list[dict] = []
    sent = time.perf_counter()
    started = float("nan")
    await ws.send_str(json.dumps({"type": "chat", "message": MESSAGE, "client_message_id": uuid.uuid4().hex}))
    while True:
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"socket ended: {msg.type} {msg.data} {msg.extra}")
        frame = json.loads(msg.data)
        kind = frame.get("type")
        frames.append({"type": kind, "size": len(msg.data.encode())})
        if kind == "agent_started" and started != started:
            started = time.perf_counter() - sent
        if kind in TERMINAL or kind == "error":
            return started, time.perf_counter() - sent, frames, kind == "agent_completed"


async def record(args) -> dict:
    (token,) = await login_users(args.urls[:1], 1, f"rec{uuid.uuid4().hex[:8]}_")
    async with session() as s:
        ws = await open_socket(s, args.urls[0], token)
        await one_run(ws)
        _, _, frames, ok = await one_run(ws)  # the second run: steady state, not first-run effects
        await ws.close()
    await asyncio.to_thread(Path(args.template).write_text, json.dumps(frames))
    return {"frames": frames, "ok": ok, "bytes": sum(f["size"] for f in frames)}


class Window:
    """Which runs a throughput row measures.

    It opens `warmup` s after the start, and not before every user's first run ended: with 1,000
    users the first round is a burst that a slow server takes seconds to serve, and a half-served
    burst is not the steady state. It stays open at least `duration` s and until every user ended
    a run sent inside it, `longest` s at most: a window shorter than one round would hold only
    the round's fastest runs. Runs ended inside it are measured; `last_end` is the last of them.
    """

    def __init__(self, users: int, warmup: float, duration: float, longest: float) -> None:
        self._waiting_first = set(range(users))
        self._uncovered = set(range(users))
        self._earliest = time.perf_counter() + warmup
        self._duration = duration
        self._longest = max(longest, duration)
        self.start = float("inf")
        self.last_end = float("nan")
        self.closed = False

    def run_ended(self, user: int, sent: float, ended: float) -> bool:
        """Whether this run of `user` is measured; a user's first run never is."""
        if user in self._waiting_first:
            self._first_done(user)
            return False
        if ended < self.start or self.closed:
            return False
        if sent >= self.start:
            self._uncovered.discard(user)
        open_for = ended - self.start
        if open_for > self._longest or (open_for > self._duration and not self._uncovered):
            self.closed = True
            return False
        self.last_end = ended
        return True

    def drop(self, user: int) -> None:
        """`user` stopped by an error: the window waits for it no more."""
        self._uncovered.discard(user)
        if user in self._waiting_first:
            self._first_done(user)

    def _first_done(self, user: int) -> None:
        self._waiting_first.discard(user)
        if not self._waiting_first:
            self.start = max(self._earliest, time.perf_counter())


async def throughput(args) -> dict:
    tokens = await tokens_for(args, "tp")
    to_started: list[float] = []
    to_terminal: list[float] = []
    failed = 0
    errors: list[str] = []
    async with session() as s:
        sockets = await open_sockets(s, args.urls, tokens)
        window = Window(args.users, args.warmup, args.duration, args.longest)

        async def user(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal failed
            try:
                while not window.closed:
                    sent = time.perf_counter()
                    st, term, _, ok = await asyncio.wait_for(one_run(ws), RUN_TIMEOUT_S)
                    if window.run_ended(i, sent, time.perf_counter()):
                        to_started.append(st)
                        to_terminal.append(term)
                        failed += not ok
            except Exception as exc:  # counted and reported; the other users go on
                errors.append(repr(exc))
                window.drop(i)

        t0 = time.perf_counter()
        await asyncio.gather(*(user(i, ws) for i, ws in enumerate(sockets)))
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    n = len(to_terminal)
    # Over the span from the window's start to the last run measured: with many users a slow
    # server ends its runs in waves, and a span ending in a gap between two would understate it.
    span = window.last_end - window.start if n else float("nan")
    return {
        "kind": args.kind, "users": args.users, "runs": n, "window_s": span,
        "failed": failed, "errors": len(errors), "first_error": errors[:1],
        "warmup_s": window.start - t0, "per_s": n / span if n else 0.0,
        "started_p50_ms": pct(to_started, 50) * 1e3, "started_p99_ms": pct(to_started, 99) * 1e3,
        "terminal_p50_ms": pct(to_terminal, 50) * 1e3, "terminal_p99_ms": pct(to_terminal, 99) * 1e3,
        "loadavg": os.getloadavg(),
    }


async def memory(args) -> dict:
    tokens = await tokens_for(args, "mem")
    url = args.urls[0]
    async with session() as s:
        await asyncio.sleep(1.0)
        before = rss_kib(args.pid)
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        opened: list[aiohttp.ClientWebSocketResponse] = []
        errors: list[str] = []

        async def one(i: int) -> None:
            async with gate:
                try:
                    opened.append(await open_socket(s, url, tokens[i % len(tokens)]))
                except Exception as exc:  # counted and reported; the bench goes on
                    errors.append(repr(exc))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(args.sockets)))
        open_s = time.perf_counter() - t0
        await asyncio.sleep(2.0)
        after = rss_kib(args.pid)
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    n = len(opened)
    return {"kind": args.kind, "sockets": n, "errors": len(errors), "first_error": errors[:1],
            "rss_before_kib": before, "rss_after_kib": after, "open_s": open_s,
            "kib_per_socket": (after - before) / n if n else float("nan"), "loadavg": os.getloadavg()}


async def sample(url: str, pid: int) -> dict[str, float]:
    """RSS (KiB) of the server process and its METRICS, scraped on a connection closed right after
    (no keep-alive connection, nor its handler task on the server, outlives the scrape)."""
    values = dict.fromkeys(METRICS, float("nan"))
    async with session(force_close=True) as s, s.get(f"{url}/metrics") as r:
        for line in (await r.text()).splitlines():
            name, _, value = line.partition(" ")
            if name in values:
                values[name] = float(value)
    return {"rss_kib": rss_kib(pid), "engines": values[METRICS[0]], "tasks": values[METRICS[1]]}


async def settled(url: str, pid: int, tasks_at_start: float) -> dict[str, float]:
    """The first sample with no engine active and no more tasks than at the start, or the last
    one after SETTLE_S: sockets and runs end a moment after the client's close."""
    deadline = time.perf_counter() + SETTLE_S
    while True:
        now = await sample(url, pid)
        if (now["engines"] == 0 and now["tasks"] <= tasks_at_start) or time.perf_counter() > deadline:
            return now
        await asyncio.sleep(0.25)


async def soak(args) -> dict:
    url = args.urls[0]
    tokens = await tokens_for(args, "soak")
    await asyncio.sleep(1.0)  # the login connections' server tasks end
    samples = {"before": await sample(url, args.pid)}
    series: list[dict[str, float]] = []
    done = 0
    failed = 0
    async with session() as s:
        sockets = await open_sockets(s, args.urls, tokens)

        async def user(ws) -> None:
            nonlocal done, failed
            while done < args.runs:
                done += 1
                mine = done
                _, _, _, ok = await asyncio.wait_for(one_run(ws), RUN_TIMEOUT_S)
                failed += not ok
                if mine == args.warmup_runs:
                    samples["after_warmup"] = await sample(url, args.pid)
                if mine % args.sample_every == 0:
                    series.append({"runs": mine, **await sample(url, args.pid)})

        t0 = time.perf_counter()
        await asyncio.gather(*(user(ws) for ws in sockets))
        elapsed = time.perf_counter() - t0
        await asyncio.gather(*(ws.close() for ws in sockets))
    samples["end"] = await settled(url, args.pid, samples["before"]["tasks"])
    return {"runs": done, "failed": failed, "elapsed_s": elapsed, "users": args.users,
            "samples": samples, "series": series, "loadavg": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["record", "throughput", "memory", "soak"])
    parser.add_argument("--url", required=True, help="one URL, or several comma-separated")
    parser.add_argument("--kind", choices=["golden", "bare"], default="golden")
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--longest", type=float, default=60.0, help="longest throughput window (s)")
    parser.add_argument("--sockets", type=int, default=5000)
    parser.add_argument("--pid", type=int, default=0)
    parser.add_argument("--runs", type=int, default=10000)
    parser.add_argument("--warmup-runs", type=int, default=1000)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--template", default="")
    args = parser.parse_args()
    args.urls = args.url.split(",")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run({"record": record, "throughput": throughput, "memory": memory,
                          "soak": soak}[args.mode](args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
