"""The `stream` section's load: K users, one socket and one run each, started together, against
goldenpath (the openai model pointed at bench/stream_model.py) or the bare relay.

Every token of the test model is its send time in ms (mod 10^6), so every token of every
`agent_message_delta` frame received gives its lag: (now_ms - token) % 1_000_000, same machine.
A delta frame may hold several tokens (goldenpath groups the deltas of a short window): its text
is split on spaces and each token counted. Prints one JSON line: tokens received and expected,
lag and time-to-first-token percentiles, failed runs, frames per run, wall time, and, measured
from the moment every socket is open (logins and handshakes left out) until a short settle after
the last run ended: the servers' CPU (utime+stime from /proc), the test model's and this load's
CPU, the bytes the database grew by (SQLite: after `PRAGMA wal_checkpoint(TRUNCATE)`, the main
file's size; PostgreSQL: `pg_total_relation_size` of the events table), the servers' RSS after.
Run by bench/stream_bench.py as its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sqlite3
import time
import uuid

import aiohttp

from bench.load import cpu_s, open_sockets, pct, rss_kib, session, tokens_for

SETTLE_S = 0.5  # after the last run ended, before the CPU and storage are read again
RUN_SLACK_S = 60.0  # a run not ended this long after its model's last chunk is due counts as failed


async def stored_bytes(args) -> int | None:
    """What the server's database holds now, in bytes (None: not measured)."""
    if args.sqlite:
        def size() -> int:
            with sqlite3.connect(args.sqlite, timeout=10) as conn:
                busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                raise RuntimeError("wal_checkpoint(TRUNCATE) was blocked by a reader or writer")
            return os.path.getsize(args.sqlite)
        return await asyncio.to_thread(size)
    if args.pg_dsn:
        import asyncpg

        conn = await asyncpg.connect(args.pg_dsn, timeout=10)
        try:
            return int(await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", args.pg_table))
        finally:
            await conn.close()
    return None


def cpu_of(pids: list[int]) -> float:
    return sum(cpu_s(pid) for pid in pids)


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Run:
    """One user's run: what its frames said."""

    __slots__ = ("completed", "deltas", "error", "frames", "sent", "tokens", "ttft")

    def __init__(self) -> None:
        self.sent = self.ttft = float("nan")
        self.frames = self.deltas = self.tokens = 0
        self.completed = False
        self.error = ""


async def one_run(ws: aiohttp.ClientWebSocketResponse, lags: list[float], timeout_s: float) -> Run:
    run = Run()
    run.sent = time.perf_counter()
    await ws.send_str(json.dumps({"type": "chat", "message": "Stream me a long answer.",
                                  "client_message_id": uuid.uuid4().hex}))
    deadline = run.sent + timeout_s
    while True:
        msg = await ws.receive(timeout=max(0.001, deadline - time.perf_counter()))
        now_ms = time.time() * 1000
        received = time.perf_counter()
        if msg.type != aiohttp.WSMsgType.TEXT:
            run.error = f"socket ended: {msg.type} {msg.data} {msg.extra}"
            return run
        run.frames += 1
        frame = json.loads(msg.data)
        kind = frame.get("type")
        if kind == "agent_message_delta":
            if not run.deltas:
                run.ttft = received - run.sent
            run.deltas += 1
            for token in frame["data"]["delta"].split():
                lags.append((now_ms - int(token)) % 1_000_000)
                run.tokens += 1
        elif kind in ("agent_completed", "agent_error", "agent_cancelled", "error"):
            run.completed = kind == "agent_completed"
            if not run.completed:
                run.error = f"{kind}: {json.dumps(frame.get('data', frame))[:300]}"
            return run


async def stream(args) -> dict:
    tokens = await tokens_for(args, "st")
    lags: list[float] = []
    timeout_s = args.chunks / args.rate + RUN_SLACK_S
    async with session() as s:
        sockets = await open_sockets(s, args.urls, tokens)
        stored_before = await stored_bytes(args)
        cpu_before, model_before = cpu_of(args.pids), cpu_of(args.model_pids)
        load_before = own_cpu_s()

        async def user(ws: aiohttp.ClientWebSocketResponse) -> Run:
            try:
                return await one_run(ws, lags, timeout_s)
            except Exception as exc:  # a timeout or a dropped socket: a failed run, reported
                run = Run()
                run.error = repr(exc) or type(exc).__name__
                return run

        t0 = time.perf_counter()
        runs = await asyncio.gather(*(user(ws) for ws in sockets))
        wall = time.perf_counter() - t0
        await asyncio.sleep(SETTLE_S)
        cpu, model_cpu = cpu_of(args.pids) - cpu_before, cpu_of(args.model_pids) - model_before
        load_cpu = own_cpu_s() - load_before
        stored_after = await stored_bytes(args)
        rss = [rss_kib(pid) for pid in args.pids]
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    failed = [r for r in runs if not r.completed or r.error or r.tokens < args.chunks]
    received = sum(r.tokens for r in runs)
    ttfts = [r.ttft for r in runs if r.ttft == r.ttft]
    first_error = next((r.error or f"{r.tokens} of {args.chunks} tokens" for r in failed), "")
    stored = None if stored_before is None or stored_after is None else stored_after - stored_before
    return {
        "kind": args.kind, "users": args.users, "chunks": args.chunks, "rate": args.rate,
        "tokens_received": received, "tokens_expected": args.users * args.chunks,
        "lag_p50_ms": pct(lags, 50), "lag_p95_ms": pct(lags, 95), "lag_p99_ms": pct(lags, 99),
        "lag_max_ms": max(lags, default=float("nan")),
        "ttft_p50_ms": pct(ttfts, 50) * 1e3, "ttft_p99_ms": pct(ttfts, 99) * 1e3,
        "failed": len(failed), "first_error": first_error,
        "frames_per_run": sum(r.frames for r in runs) / len(runs),
        "deltas_per_run": sum(r.deltas for r in runs) / len(runs),
        "wall_s": wall, "server_cpu_s": cpu, "model_cpu_s": model_cpu,
        "load_cpu_s": load_cpu,
        "cpu_per_token_us": cpu / received * 1e6 if received else float("nan"),
        "stored_bytes": stored, "stored_per_token": stored / received if stored is not None and received
        else None, "rss_kib": rss, "loadavg": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="one URL, or several comma-separated")
    parser.add_argument("--kind", choices=["golden", "bare"], default="golden")
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--chunks", type=int, default=200, help="the test model's chunks per answer")
    parser.add_argument("--rate", type=float, default=50.0, help="the test model's chunks per second")
    parser.add_argument("--pids", default="", help="the servers' pids, comma-separated (CPU, RSS)")
    parser.add_argument("--model-pid", default="", help="the test model's pid (its CPU)")
    parser.add_argument("--sqlite", default="", help="the server's SQLite file (bytes stored)")
    parser.add_argument("--pg-dsn", default="", help="the server's PostgreSQL database (bytes stored)")
    parser.add_argument("--pg-table", default="events")
    args = parser.parse_args()
    args.urls = args.url.split(",")
    args.pids = [int(p) for p in args.pids.split(",") if p]
    args.model_pids = [int(p) for p in args.model_pid.split(",") if p]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(asyncio.run(stream(args))))


if __name__ == "__main__":
    main()
