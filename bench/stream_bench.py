"""The `stream` section: token streams of a real-model stand-in, goldenpath vs a bare relay.

bench/stream_model.py plays an OpenAI-compatible model that streams --stream-chunks tokens at
--stream-rate a second, each token its own send time; goldenpath (its openai model pointed at
it) and bench/stream_relay.py (the floor: SSE lines in, WebSocket frames out, nothing stored)
carry them to bench/stream_load.py, which measures each token's lag. For each kind a ladder of
K users (one run each, started together), stopped at the first K that fails.
"""

# ruff: noqa: S603 - the one subprocess here is the load, run with this interpreter and our argv

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.report import Report, mib, ratio, verdict
from bench.servers import (
    HERE,
    PYTHON,
    Running,
    free_port,
    golden,
    http_server,
    production_missing,
    production_profile,
    several,
    urls,
)

LAG_P99_LIMIT_MS = 100.0  # a row passes with p99 lag under this and no failed run
KINDS = (("golden", "goldenpath"), ("bare", "bare relay"))


def bench_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(HERE.parent))


@contextmanager
def test_model(tmp: Path, chunks: int, rate: float) -> Iterator[Running]:
    port = free_port()
    cmd = [PYTHON, "-m", "bench.stream_model", "--port", str(port), "--chunks", str(chunks),
           "--rate", str(rate)]
    with http_server(cmd, bench_env(), tmp, "/health", port) as running:
        yield running


@contextmanager
def relay(tmp: Path, model: Running) -> Iterator[Running]:
    port = free_port()
    cmd = [PYTHON, "-m", "bench.stream_relay", "--port", str(port), "--model-url", f"{model.url}/v1"]
    with http_server(cmd, bench_env(), tmp, "/health", port) as running:
        yield running


def model_env(model: Running) -> dict[str, str]:
    """goldenpath's openai model pointed at the test model (which takes any key and model name)."""
    return {"GOLDENPATH_MODEL__PROVIDER": "openai", "GOLDENPATH_MODEL__BASE_URL": f"{model.url}/v1",
            "GOLDENPATH_MODEL__NAME": "bench-stream", "GOLDENPATH_MODEL__API_KEY": "bench"}


def stream_load(*args: str, timeout_s: float = 900) -> dict:
    """Run bench/stream_load.py in its own interpreter; its last stdout line, parsed."""
    out = subprocess.run([PYTHON, "-m", "bench.stream_load", *args], env=bench_env(), capture_output=True,
                         text=True, timeout=timeout_s, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"stream load {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def passed(row: dict) -> bool:
    return row["lag_p99_ms"] < LAG_P99_LIMIT_MS and row["failed"] == 0


class StreamBench:
    def __init__(self, report: Report, tmp: Path, args) -> None:
        self.report = report
        self.say = report.say
        self.tmp = tmp
        self.chunks, self.rate, self.ladder_k = args.stream_chunks, args.stream_rate, args.stream_k

    def run(self) -> None:
        self.say("## 6. Token streams of a real-model stand-in: goldenpath vs a bare relay")
        self.say()
        self.describe()
        self.results(self.sqlite_profile(), "SQLite")
        self.say("## 7. The same token streams with the production profile: PostgreSQL + Redis, two "
                 "processes")
        self.say()
        if self.report.skipped(production_missing()):
            return
        self.say("Two `goldenpath serve` processes with GOLDENPATH_ENV=production (a fresh PostgreSQL "
                 "database, a private redis-server, as section 3 builds them), users alternating between "
                 "them; the bare side is two relays, the users split the same way; one test model for "
                 "each side. Bytes stored: `pg_total_relation_size` of the events table (indexes and "
                 "TOAST included) before and after the row.")
        self.say()
        self.results(self.production(), "PostgreSQL")

    def describe(self) -> None:
        self.say(
            f"A test model (bench/stream_model.py, OpenAI-compatible, its own process) streams each answer "
            f"as {self.chunks} chunks of one token, {self.rate:g} a second on an absolute schedule; each "
            "token is the time it was written (ms mod 10^6), so the load (bench/stream_load.py) computes "
            "every token's lag when it arrives, same clock. goldenpath: embedded defaults (SQLite in a "
            "temp dir, one process), its openai model pointed at the test model, the abuse limits raised "
            "as in section 2. Bare relay (bench/stream_relay.py): one aiohttp process that opens each "
            "chat's stream with one shared ClientSession, `json.loads` each SSE data line and forwards "
            "each content delta as an `agent_message_delta`-shaped frame, then `agent_completed`; "
            "nothing stored, nothing grouped. A row: K users each open one socket, then all send one "
            "message at once. A delta frame may carry several tokens (goldenpath groups deltas within "
            "`runs.delta_window_ms`); each token counts. A row fails at p99 lag ≥ "
            f"{LAG_P99_LIMIT_MS:g} ms or any failed run (no agent_completed, an error frame, fewer tokens "
            "than sent); a kind's ladder stops at its first failing row. Servers are restarted between "
            "kinds, not between rows; before a kind's first row, one run per server process warms it up "
            "(not reported). CPU, stored bytes and RSS are measured from the moment every "
            "socket is open (logins left out) to 0.5 s after the last run ended; per token = divided by "
            "the tokens delivered. SQLite's bytes stored: `PRAGMA wal_checkpoint(TRUNCATE)` on a separate "
            "connection, then the main file's size.")
        self.say()

    # -- the ladders ------------------------------------------------------------------------------

    def ladder(self, kind: str, servers: list[Running], model: Running, storage: list[str]) -> list[dict]:
        def row(k: int) -> dict:
            return stream_load("--url", urls(servers), "--kind", kind, "--users", str(k),
                               "--chunks", str(self.chunks), "--rate", str(self.rate),
                               "--pids", ",".join(str(s.pid) for s in servers),
                               "--model-pid", str(model.pid), *storage)

        warm = row(len(servers))  # one run per process first: no row measures a cold start
        print(f"  stream {kind} warm-up: lag p99 {warm['lag_p99_ms']:.1f} ms, failed {warm['failed']}",
              flush=True)
        rows = []
        for k in self.ladder_k:
            rows.append(row(k))
            print(f"  stream {kind} K={k}: lag p99 {rows[-1]['lag_p99_ms']:.1f} ms, failed "
                  f"{rows[-1]['failed']}", flush=True)
            if not passed(rows[-1]):
                break
        return rows

    def sqlite_profile(self) -> dict[str, list[dict]]:
        db = Path(tempfile.mkdtemp(dir=self.tmp)) / "stream.db"
        with test_model(self.tmp, self.chunks, self.rate) as m, \
                golden(self.tmp, {"GOLDENPATH_DATABASE__URL": f"sqlite:///{db}", **model_env(m)}) as g:
            golden_rows = self.ladder("golden", [g], m, ["--sqlite", str(db)])
        with test_model(self.tmp, self.chunks, self.rate) as m, relay(self.tmp, m) as b:
            bare_rows = self.ladder("bare", [b], m, [])
        return {"golden": golden_rows, "bare": bare_rows}

    def production(self) -> dict[str, list[dict]]:
        with ExitStack() as stack:
            extra = stack.enter_context(production_profile(self.tmp, processes=2))
            m = stack.enter_context(test_model(self.tmp, self.chunks, self.rate))
            env = {**extra, **model_env(m)}
            gs = stack.enter_context(several(2, lambda: golden(self.tmp, env)))
            dsn = extra["GOLDENPATH_DATABASE__URL"].replace("postgresql+asyncpg://", "postgresql://")
            golden_rows = self.ladder("golden", gs, m, ["--pg-dsn", dsn])
        with test_model(self.tmp, self.chunks, self.rate) as m, \
                several(2, lambda: relay(self.tmp, m)) as bs:
            bare_rows = self.ladder("bare", bs, m, [])
        return {"golden": golden_rows, "bare": bare_rows}

    # -- the results ------------------------------------------------------------------------------

    def results(self, rows: dict[str, list[dict]], store: str) -> None:
        for kind, name in KINDS:
            self.say(f"{name} ({store}):" if kind == "golden" else f"{name}:")
            self.say()
            self.report.table(
                ["K", "tokens", "lag p50 / p95 / p99 / max", "TTFT p50 / p99", "failed",
                 "frames / deltas per run", "server CPU per token", "model / load CPU",
                 "bytes stored per token", "RSS after", "wall", "p99 < 100 ms, none failed"],
                [self.line(r) for r in rows[kind]])
            errors = [r for r in rows[kind] if r["first_error"]]
            if errors:
                self.say(f"K={errors[0]['users']}, {name}: {errors[0]['failed']} failed runs; the first: "
                         f"{errors[0]['first_error']}")
                self.say()
        self.summary(rows)

    @staticmethod
    def line(r: dict) -> list[object]:
        stored = "n/a" if r["stored_per_token"] is None else f"{r['stored_per_token']:.0f} B"
        return [r["users"], f"{r['tokens_received']} / {r['tokens_expected']}",
                f"{r['lag_p50_ms']:.1f} / {r['lag_p95_ms']:.1f} / {r['lag_p99_ms']:.1f} / "
                f"{r['lag_max_ms']:.0f} ms",
                f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} ms", r["failed"],
                f"{r['frames_per_run']:.1f} / {r['deltas_per_run']:.1f}", f"{r['cpu_per_token_us']:.0f} µs",
                f"{r['model_cpu_s']:.2f} / {r['load_cpu_s']:.2f} s", stored,
                " + ".join(mib(k) for k in r["rss_kib"]),
                f"{r['wall_s']:.1f} s", verdict(passed(r))]

    def summary(self, rows: dict[str, list[dict]]) -> None:
        best: dict[str, dict | None] = {}
        for kind, _name in KINDS:
            ok = [r for r in rows[kind] if passed(r)]
            best[kind] = ok[-1] if ok else None

        def most(kind: str) -> str:
            r = best[kind]
            if r is None:
                return "none"
            top = r is rows[kind][-1] and r["users"] == self.ladder_k[-1]
            return f"{'≥ ' if top else ''}{r['users']}"

        g, b = best["golden"], best["bare"]
        k_ratio = f"{ratio(g['users'], b['users']):.2f}x" if g and b else "n/a"
        self.say(f"Largest K with p99 lag < {LAG_P99_LIMIT_MS:g} ms and no failed run: goldenpath "
                 f"{most('golden')}, bare relay {most('bare')} (ladder {','.join(map(str, self.ladder_k))}); "
                 f"goldenpath ÷ bare: {k_ratio}.")
        both = [k for k in self.ladder_k
                if any(r["users"] == k and passed(r) for r in rows["golden"])
                and any(r["users"] == k and passed(r) for r in rows["bare"])]
        if both:
            k = both[-1]
            gc = next(r for r in rows["golden"] if r["users"] == k)["cpu_per_token_us"]
            bc = next(r for r in rows["bare"] if r["users"] == k)["cpu_per_token_us"]
            self.say(f"Server CPU per token at K={k}, the largest both passed: goldenpath {gc:.0f} µs, bare "
                     f"relay {bc:.0f} µs; goldenpath ÷ bare: {ratio(gc, bc):.1f}x.")
        else:
            self.say("No K that both passed: no CPU comparison.")
        self.say()
