"""The load process: drives a goldenpath or bare server over loopback and prints one JSON line.

Run by bench/__main__.py as its own process, so the server under test has its own interpreter
and core. Modes: record (one run's frames, the bare server's template), throughput, memory, soak.
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


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def login_users(session: aiohttp.ClientSession, url: str, count: int, prefix: str) -> list[str]:
    """Register and log in `count` users once; returns their access tokens."""
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> str:
        body = {"username": f"{prefix}{i}", "password": PASSWORD}
        async with gate:
            async with session.post(f"{url}/api/auth/register", json=body) as r:
                if r.status != 201:
                    raise RuntimeError(f"register {r.status}: {await r.text()}")
            async with session.post(f"{url}/api/auth/login", json=body) as r:
                if r.status != 200:
                    raise RuntimeError(f"login {r.status}: {await r.text()}")
                return (await r.json())["access_token"]

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def open_socket(session: aiohttp.ClientSession, url: str, token: str | None
                      ) -> aiohttp.ClientWebSocketResponse:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ws = await session.ws_connect(f"{url}/ws", headers=headers, max_msg_size=0, heartbeat=None)
    first = await ws.receive_json()
    if first.get("type") != "ready":
        raise RuntimeError(f"expected ready, got {first}")
    return ws


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


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False),
                                 timeout=aiohttp.ClientTimeout(total=None))


async def record(args) -> dict:
    async with session() as s:
        (token,) = await login_users(s, args.url, 1, f"rec{uuid.uuid4().hex[:8]}_")
        ws = await open_socket(s, args.url, token)
        one_run_result = await one_run(ws)
        _, _, frames, ok = await one_run(ws)  # the second run: steady state, not first-run effects
        await ws.close()
    del one_run_result
    await asyncio.to_thread(Path(args.template).write_text, json.dumps(frames))
    return {"frames": frames, "ok": ok, "bytes": sum(f["size"] for f in frames)}


async def throughput(args) -> dict:
    async with session() as s:
        tokens: list[str | None] = (
            await login_users(s, args.url, args.users, f"tp{uuid.uuid4().hex[:8]}_")
            if args.kind == "golden" else [None] * args.users
        )
        sockets = await asyncio.gather(*(open_socket(s, args.url, t) for t in tokens))
        to_started: list[float] = []
        to_terminal: list[float] = []
        failed = 0
        warm_until = time.perf_counter() + args.warmup
        stop = warm_until + args.duration

        async def user(ws) -> None:
            nonlocal failed
            while time.perf_counter() < stop:
                st, term, _, ok = await one_run(ws)
                if time.perf_counter() <= warm_until:
                    continue
                if time.perf_counter() > stop:
                    break
                to_started.append(st)
                to_terminal.append(term)
                failed += not ok

        await asyncio.gather(*(user(ws) for ws in sockets))
        await asyncio.gather(*(ws.close() for ws in sockets))
    n = len(to_terminal)
    return {
        "kind": args.kind, "users": args.users, "duration_s": args.duration, "runs": n, "failed": failed,
        "per_s": n / args.duration,
        "started_p50_ms": pct(to_started, 50) * 1e3, "started_p99_ms": pct(to_started, 99) * 1e3,
        "terminal_p50_ms": pct(to_terminal, 50) * 1e3, "terminal_p99_ms": pct(to_terminal, 99) * 1e3,
        "loadavg": os.getloadavg(),
    }


async def memory(args) -> dict:
    async with session() as s:
        tokens: list[str | None] = (
            await login_users(s, args.url, args.users, f"mem{uuid.uuid4().hex[:8]}_")
            if args.kind == "golden" else [None] * args.users
        )
        await asyncio.sleep(1.0)
        before = rss_kib(args.pid)
        gate = asyncio.Semaphore(64)
        opened: list[aiohttp.ClientWebSocketResponse] = []
        errors: list[str] = []

        async def one(i: int) -> None:
            async with gate:
                try:
                    opened.append(await open_socket(s, args.url, tokens[i % len(tokens)]))
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


async def engines_active(s: aiohttp.ClientSession, url: str) -> float:
    async with s.get(f"{url}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("goldenpath_engines_active "):
                return float(line.split()[1])
    return float("nan")


async def soak(args) -> dict:
    async with session() as s:
        tokens = await login_users(s, args.url, args.users, f"soak{uuid.uuid4().hex[:8]}_")
        sockets = await asyncio.gather(*(open_socket(s, args.url, t) for t in tokens))
        samples = {"before": (rss_kib(args.pid), await engines_active(s, args.url))}
        done = 0
        failed = 0
        warm = asyncio.Event()
        rss_series: list[tuple[int, int]] = []

        async def user(ws) -> None:
            nonlocal done, failed
            while done < args.runs:
                done += 1
                mine = done
                _, _, _, ok = await one_run(ws)
                failed += not ok
                if mine >= args.warmup_runs and not warm.is_set():
                    warm.set()
                if mine % 250 == 0:
                    rss_series.append((mine, rss_kib(args.pid)))

        async def mark_warm() -> None:
            await warm.wait()
            samples["after_warmup"] = (rss_kib(args.pid), await engines_active(s, args.url))

        t0 = time.perf_counter()
        await asyncio.gather(mark_warm(), *(user(ws) for ws in sockets))
        elapsed = time.perf_counter() - t0
        await asyncio.gather(*(ws.close() for ws in sockets))
        await asyncio.sleep(0.5)
        samples["end"] = (rss_kib(args.pid), await engines_active(s, args.url))
    return {"runs": done, "failed": failed, "elapsed_s": elapsed, "users": args.users,
            "samples": samples, "rss_series": rss_series, "loadavg": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["record", "throughput", "memory", "soak"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--kind", choices=["golden", "bare"], default="golden")
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--sockets", type=int, default=5000)
    parser.add_argument("--pid", type=int, default=0)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--warmup-runs", type=int, default=300)
    parser.add_argument("--template", default="")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run({"record": record, "throughput": throughput, "memory": memory,
                          "soak": soak}[args.mode](args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
