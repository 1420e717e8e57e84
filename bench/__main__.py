"""`make bench`: engine micro-benchmark, golden path vs a bare WebSocket server (SQLite, one
process; then the production profile: PostgreSQL + Redis, two processes), memory per socket, soak,
token streams of a real-model stand-in vs a bare relay (bench/stream_bench.py).

Servers run as their own processes (goldenpath via `goldenpath serve`, the bare one via
bench/bare_server.py); the load runs as another process (bench/load.py); all over loopback.
Writes bench/results.md and prints the same text. Processes: bench/servers.py.
"""

# ruff: noqa: S603 - the one subprocess here is py-spy, run with our own argv

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from bench import engine_bench
from bench.report import Report, la, machine, mib, ratio, verdict
from bench.servers import (
    BIN,
    HERE,
    PYTHON,
    Running,
    bare,
    golden,
    load,
    production_missing,
    production_profile,
    several,
    urls,
)
from bench.stream_bench import StreamBench

SECTIONS = ("engine", "golden", "prod", "memory", "soak", "stream")
GATED_USERS = 100  # the rows the targets apply to
WARMUP_S = 1.0  # each throughput row's shortest warm-up (longer until every user's first run ended)
LONGEST_WINDOW_S = 60.0  # a throughput row measures --duration s, longer if a round takes longer
SOAK_USERS = 20
SOCKETS_PER_USER = 100  # the memory test's users each hold this many idle sockets


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.report = Report()
        self.say = self.report.say
        self.tmp = Path(tempfile.mkdtemp(prefix="goldenpath-bench-"))
        self.template = self.tmp / "frames.json"
        self.recorded: dict | None = None
        self.profile_note = ""

    # -- shared steps ---------------------------------------------------------------------------

    def record(self, url: str) -> dict:
        """One goldenpath run's frames: the bare servers' template (recorded once per bench)."""
        if self.recorded is None:
            self.recorded = load("record", "--url", url, "--template", str(self.template))
        return self.recorded

    def ensure_template(self) -> dict:
        if self.recorded is None:
            with golden(self.tmp) as g:
                self.record(g.url)
        assert self.recorded is not None
        return self.recorded

    def throughput(self, kind: str, servers: list[Running], users: int) -> dict:
        return load("throughput", "--url", urls(servers), "--kind", kind, "--users", str(users),
                    "--duration", str(self.args.duration), "--warmup", str(WARMUP_S),
                    "--longest", str(LONGEST_WINDOW_S))

    def compare(self, gs: list[Running], bs: list[Running], users_list: list[int], *, profile: bool = False
                ) -> list[tuple[int, dict, dict]]:
        rows = []
        for users in users_list:
            with self.profiled(gs[0], profile and users == GATED_USERS):
                g = self.throughput("golden", gs, users)
            rows.append((users, g, self.throughput("bare", bs, users)))
        return rows

    @contextmanager
    def profiled(self, server: Running, wanted: bool):
        """py-spy on the goldenpath server during the 100-user row of section 2, with --profile."""
        if not (wanted and self.args.profile and shutil.which("py-spy", path=str(BIN))):
            yield
            return
        out = HERE / "profile-100-users.txt"
        spy = subprocess.Popen([str(BIN / "py-spy"), "record", "--pid", str(server.pid), "--format", "raw",
                                "--output", str(out), "--nonblocking",
                                "--duration", str(int(self.args.duration) + 4)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.profile_note = f"py-spy profile (collapsed stacks) of the 100-user row: {out.name}"
        try:
            yield
        finally:
            spy.wait(timeout=60)

    def run_description(self, where: str) -> str:
        rec = self.ensure_template()
        kinds = ", ".join(f["type"] for f in rec["frames"])
        return (f"Message \"What is 17 * 23?\", builtin model, BUILTIN_DELAY_MS=0, {where}. One run = "
                f"{len(rec['frames'])} frames after the send ({kinds}), {rec['bytes']} bytes; "
                "the bare server replays frames of the same types and sizes. One socket per user, the "
                "next message sent when the previous run's terminal event arrives. Warm-up: at least "
                f"{WARMUP_S:g} s and until every user's first run ended (the first round is a burst). "
                f"Then runs are measured for {self.args.duration:g} s, longer (up to "
                f"{LONGEST_WINDOW_S:g} s) until every user ended a run sent after the warm-up: a window "
                "shorter than one round would hold only the round's fastest runs. runs/s = runs measured "
                "÷ the time from the window's start to the last of them (the window column).")

    def comparison_tables(self, rows: list[tuple[int, dict, dict]]) -> None:
        def line(users: int, name: str, r: dict) -> list[object]:
            return [users, name, f"{r['per_s']:.0f}", r["failed"] + r["errors"], f"{r['warmup_s']:.1f} s",
                    f"{r['runs']} in {r['window_s']:.1f} s",
                    f"{r['started_p50_ms']:.1f} / {r['started_p99_ms']:.1f} ms",
                    f"{r['terminal_p50_ms']:.1f} / {r['terminal_p99_ms']:.1f} ms", la(r["loadavg"])]

        self.report.table(
            ["users", "server", "runs/s", "failed", "warm-up", "window", "to agent_started p50 / p99",
             "to terminal p50 / p99", "load avg after"],
            [line(users, name, r) for users, g, b in rows for name, r in (("goldenpath", g), ("bare", b))])
        ratios = []
        for users, g, b in rows:
            tr, pr = ratio(g["per_s"], b["per_s"]), ratio(g["terminal_p99_ms"], b["terminal_p99_ms"])
            gated = users == GATED_USERS
            ratios.append([users, f"{tr:.3f}x", f"{pr:.1f}x", verdict(tr >= 0.5) if gated else "n/a",
                           verdict(pr <= 3.0) if gated else "n/a"])
        self.report.table(["users", "runs/s ratio (golden ÷ bare)", "p99 to terminal ratio",
                           "target ≥ 0.5x throughput", "target p99 ≤ 3x"], ratios)
        for users, g, b in rows:
            for name, r in (("goldenpath", g), ("bare", b)):
                if r["first_error"]:
                    self.say(f"{users} users, {name}: {r['errors']} users stopped by an error; "
                             f"the first: {r['first_error'][0]}")
                    self.say()

    # -- sections -------------------------------------------------------------------------------

    def engine(self) -> None:
        rows = engine_bench.run()
        self.say("## 1. Engine creation + cleanup (in-process, no-op bridge/model/audit)")
        self.say()

        def us(ms: float) -> str:
            return f"{ms * 1e3:.1f} µs"

        self.report.table(
            ["engines active", "iterations", "create p50", "create p99", "cleanup p50", "cleanup p99",
             "create+cleanup p50", "create+cleanup p99", "max", "target p99 < 1 ms"],
            [[r["active"], r["iterations"], us(r["create_p50_ms"]), us(r["create_p99_ms"]),
              us(r["cleanup_p50_ms"]), us(r["cleanup_p99_ms"]), us(r["both_p50_ms"]), us(r["both_p99_ms"]),
              us(r["both_max_ms"]), verdict(r["both_p99_ms"] < 1.0) if r["active"] == 1000 else "n/a"]
             for r in rows])

    def golden_path(self) -> None:
        with golden(self.tmp) as g:
            self.record(g.url)
            with bare(self.tmp, self.template) as b:
                rows = self.compare([g], [b], self.args.users, profile=True)
        self.say("## 2. Golden path vs a bare aiohttp WebSocket server")
        self.say()
        self.say(self.run_description("SQLite in a temp dir, one goldenpath process"))
        self.say()
        self.comparison_tables(rows)
        if self.profile_note:
            self.say(self.profile_note)
            self.say()

    def production(self) -> None:
        self.say("## 3. The same with the production profile: PostgreSQL + Redis, two processes")
        self.say()
        if self.report.skipped(production_missing()):
            return
        self.ensure_template()  # before the cluster: the bare servers need it
        with production_profile(self.tmp, processes=2) as extra, \
                several(2, lambda: golden(self.tmp, extra)) as gs, \
                several(2, lambda: bare(self.tmp, self.template)) as bs:
            rows = self.compare(gs, bs, self.args.prod_users)
        self.say(self.run_description(
            "two `goldenpath serve` processes with GOLDENPATH_ENV=production (a fresh PostgreSQL "
            "database on 127.0.0.1:5432, dropped afterwards; the Redis bus on a private redis-server; "
            "a random 48-byte JWT secret; the same cheap argon2 and raised limits as above)"))
        self.say()
        self.say("Users alternate between the two processes (user i registers, logs in and opens its "
                 "socket on process i mod 2). For fairness the bare side is two bare server processes "
                 "too, the load split between them the same way.")
        self.say()
        self.comparison_tables(rows)

    def memory(self) -> None:
        self.ensure_template()
        sockets = self.args.sockets
        users = max(1, -(-sockets // SOCKETS_PER_USER))
        common = ["--users", str(users), "--sockets", str(sockets)]
        with golden(self.tmp, {"GOLDENPATH_SECURITY__MAX_SOCKETS_PER_USER": str(SOCKETS_PER_USER)}) as g:
            gm = load("memory", "--url", g.url, "--kind", "golden", "--pid", str(g.pid), *common)
        with bare(self.tmp, self.template) as b:
            bm = load("memory", "--url", b.url, "--kind", "bare", "--pid", str(b.pid), *common)
        per_socket = ratio(gm["kib_per_socket"], bm["kib_per_socket"])
        self.say("## 4. Memory per idle authenticated socket")
        self.say()
        self.say(f"{users} users x {SOCKETS_PER_USER} sockets each (MAX_SOCKETS_PER_USER raised to "
                 f"{SOCKETS_PER_USER}); RSS (VmRSS) of the server process before opening and 2 s after "
                 "the last `ready`.")
        self.say()
        self.report.table(
            ["server", "sockets open", "errors", "RSS before", "RSS after", "KiB per socket", "time to open"],
            [[name, r["sockets"], r["errors"], mib(r["rss_before_kib"]), mib(r["rss_after_kib"]),
              f"{r['kib_per_socket']:.1f}", f"{r['open_s']:.1f} s"]
             for name, r in (("goldenpath", gm), ("bare", bm))])
        self.say(f"Ratio goldenpath ÷ bare: {per_socket:.2f}x — target ≤ 2x: {verdict(per_socket <= 2.0)}")
        if gm["first_error"] or bm["first_error"]:
            self.say(f"First socket error: {gm['first_error'] or bm['first_error']}")
        self.say()

    def soak(self) -> None:
        runs = self.args.soak_runs
        warmup_runs = max(1, min(1000, runs // 10))
        with golden(self.tmp) as g:
            sk = load("soak", "--url", g.url, "--users", str(SOAK_USERS), "--runs", str(runs),
                      "--warmup-runs", str(warmup_runs), "--sample-every", str(max(1, runs // 20)),
                      "--pid", str(g.pid), timeout_s=3600)
        s = sk["samples"]
        before, warm, end = s["before"], s["after_warmup"], s["end"]
        drift = (end["rss_kib"] - warm["rss_kib"]) / warm["rss_kib"]
        self.say(f"## 5. Soak: {sk['runs']} runs, {SOAK_USERS} users, {sk['elapsed_s']:.1f} s, "
                 f"{sk['failed']} failed")
        self.say()
        self.say(f"Samples: before (users logged in, no socket open yet), after the {warmup_runs}-run "
                 "warm-up (sockets open), at the end (every socket closed, then up to 10 s for the "
                 "server to settle). Tasks: `goldenpath_event_loop_tasks`, all the asyncio tasks of the "
                 "server's loop (the scrape's own included).")
        self.say()
        self.report.table(
            ["point", "RSS", "goldenpath_engines_active", "goldenpath_event_loop_tasks"],
            [[point.replace("_", " "), mib(s[point]["rss_kib"]), f"{s[point]['engines']:.0f}",
              f"{s[point]['tasks']:.0f}"] for point in ("before", "after_warmup", "end")])
        series = ", ".join(f"{p['runs']}: {p['rss_kib'] / 1024:.1f} / {p['tasks']:.0f}" for p in sk["series"])
        self.say(f"RSS (MiB) / tasks every {max(1, runs // 20)} runs: {series}")
        self.say()
        self.say(f"No active engine at the end: {verdict(end['engines'] == 0)}. No more tasks at the end "
                 f"than before ({end['tasks']:.0f} vs {before['tasks']:.0f}): "
                 f"{verdict(end['tasks'] <= before['tasks'])}. RSS drift since warm-up {drift * 100:+.1f}% "
                 f"— target within 10%: {verdict(abs(drift) <= 0.10)}")
        self.say()

    def stream(self) -> None:
        StreamBench(self.report, self.tmp, self.args).run()

    # -- the whole bench ------------------------------------------------------------------------

    def run(self) -> None:
        t_start = time.monotonic()
        m = machine()
        self.say("# goldenpath benchmark results")
        self.say()
        self.say(f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, Linux {m['kernel']}. "
                 f"Load average (1/5/15 min) at start: {la(os.getloadavg())}.")
        self.say()
        steps = {"engine": self.engine, "golden": self.golden_path, "prod": self.production,
                 "memory": self.memory, "soak": self.soak, "stream": self.stream}
        try:
            for name in self.args.only:
                steps[name]()
        except Exception as exc:
            self.say(f"**Stopped by an error** in section `{name}`: {str(exc).splitlines()[0]}")
            self.say()
            raise
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            command = shlex.join([Path(PYTHON).name, "-m", "bench", *self.args.argv])
            elapsed = time.monotonic() - t_start
            self.say(f"Load average at end: {la(os.getloadavg())}. Whole run: {elapsed:.0f} s. "
                     f"Command: `{command}`{'' if self.args.argv else ' (`make bench`)'}.")
            self.report.write(self.args.out)


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def section_list(text: str) -> list[str]:
    names = [part for part in text.split(",") if part]
    unknown = set(names) - set(SECTIONS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    return [name for name in SECTIONS if name in names]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--duration", type=float, default=8.0,
                        help="seconds measured per throughput row, at least")
    parser.add_argument("--users", type=int_list, default=[1, 100, 1000],
                        help="concurrent users of section 2's rows (SQLite, one process)")
    parser.add_argument("--prod-users", type=int_list, default=[100, 1000],
                        help="concurrent users of section 3's rows (PostgreSQL + Redis, two processes)")
    parser.add_argument("--sockets", type=int, default=5000, help="idle sockets of the memory test")
    parser.add_argument("--soak-runs", type=int, default=10000)
    parser.add_argument("--stream-chunks", type=int, default=200,
                        help="stream section: tokens per answer of the test model")
    parser.add_argument("--stream-rate", type=float, default=50.0,
                        help="stream section: tokens per second of the test model")
    parser.add_argument("--stream-k", type=int_list, default=[5, 10, 20, 30, 40, 60, 80, 100],
                        help="stream section: the ladder of concurrent users, each row one run per user")
    parser.add_argument("--only", type=section_list, default=list(SECTIONS),
                        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the goldenpath server during the 100-user row (needs py-spy)")
    parser.add_argument("--out", default=str(HERE / "results.md"))
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    return args


def main() -> None:
    Bench(parse_args()).run()


if __name__ == "__main__":
    main()
