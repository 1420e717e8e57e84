"""`make bench`: engine micro-benchmark, golden path vs a bare WebSocket server, memory per socket, soak.

Servers run as their own processes (goldenpath via `goldenpath serve`, the bare one via
bench/bare_server.py); the load runs as a third process (bench/load.py); all over loopback.
Writes bench/results.md and prints the same table.
"""

# ruff: noqa: S603 - every subprocess here runs our own argv (this interpreter, goldenpath, py-spy)

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from bench import engine_bench

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, path: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + path, timeout=1.0) as r:  # noqa: S310 - loopback only
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}{path} not up after {timeout_s} s")


def golden_env(tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "GOLDENPATH_DATABASE__URL": f"sqlite+aiosqlite:///{tmp}/bench.db",
        "GOLDENPATH_MODEL__PROVIDER": "builtin",
        "GOLDENPATH_MODEL__BUILTIN_DELAY_MS": "0",
        "GOLDENPATH_AUTH__ARGON2_TIME_COST": "1",
        "GOLDENPATH_AUTH__ARGON2_MEMORY_KIB": "1024",
        "GOLDENPATH_AUTH__ARGON2_PARALLELISM": "1",
        "GOLDENPATH_SECURITY__MESSAGES_PER_MINUTE": "1000000",
        "GOLDENPATH_LIMITS__MAX_PENDING_RUNS_PER_USER": "1000",
        "GOLDENPATH_LOG__LEVEL": "WARNING",
    })
    env.update(extra or {})
    return env


@contextmanager
def server(cmd: list[str], env: dict[str, str], cwd: Path, ready_path: str, port: int):
    log = open(cwd / f"server-{port}.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_raise_nofile)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url, ready_path)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _raise_nofile() -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextmanager
def golden(tmp: Path, extra: dict[str, str] | None = None):
    run_dir = Path(tempfile.mkdtemp(dir=tmp))
    port = free_port()
    cmd = [str(BIN / "goldenpath"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with server(cmd, golden_env(run_dir, extra), run_dir, "/ready", port) as (proc, url):
        yield proc, url


@contextmanager
def bare(tmp: Path, template: Path):
    port = free_port()
    cmd = [PYTHON, "-m", "bench.bare_server", "--port", str(port), "--template", str(template)]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    with server(cmd, env, tmp, "/health", port) as (proc, url):
        yield proc, url


def load(*args: str, timeout_s: float = 240) -> dict:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    out = subprocess.run([PYTHON, "-m", "bench.load", *args], env=env, capture_output=True, text=True,
                         timeout=timeout_s, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"load {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release()}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def la(values) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load per throughput row")
    parser.add_argument("--users", default="1,100",
                        help="concurrent users of the throughput rows (1,100,1000 for more)")
    parser.add_argument("--sockets", type=int, default=5000, help="idle sockets of the memory test")
    parser.add_argument("--soak-runs", type=int, default=2000)
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the goldenpath server during the 100-user row (needs py-spy)")
    parser.add_argument("--out", default=str(HERE / "results.md"))
    args = parser.parse_args()
    t_start = time.monotonic()
    load_at_start = os.getloadavg()
    lines: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="goldenpath-bench-"))

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    m = machine()
    say("# goldenpath benchmark results")
    say()
    say(f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, Linux {m['kernel']}. "
        f"Load average (1/5/15 min) at start: {la(load_at_start)}.")
    say()

    # 1. Engine creation and cleanup.
    rows = engine_bench.run()
    say("## 1. Engine creation + cleanup (in-process, no-op bridge/model/audit)")
    say()
    say("| engines active | iterations | create p50 | create p99 | cleanup p50 | cleanup p99 "
        "| create+cleanup p50 | create+cleanup p99 | max | target p99 < 1 ms |")
    say("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        target = verdict(r["both_p99_ms"] < 1.0) if r["active"] == 1000 else "n/a"
        say(f"| {r['active']} | {r['iterations']} | {r['create_p50_ms'] * 1e3:.1f} µs "
            f"| {r['create_p99_ms'] * 1e3:.1f} µs | {r['cleanup_p50_ms'] * 1e3:.1f} µs "
            f"| {r['cleanup_p99_ms'] * 1e3:.1f} µs | {r['both_p50_ms'] * 1e3:.1f} µs "
            f"| {r['both_p99_ms'] * 1e3:.1f} µs | {r['both_max_ms'] * 1e3:.1f} µs | {target} |")
    say()

    # 2. Golden path vs bare.
    template = tmp / "frames.json"
    results: list[tuple[int, dict, dict]] = []
    profile_note = ""
    with golden(tmp) as (gproc, gurl):
        rec = load("record", "--url", gurl, "--template", str(template))
        with bare(tmp, template) as (_bproc, burl):
            for users in [int(u) for u in args.users.split(",")]:
                common = ["--users", str(users), "--duration", str(args.duration)]
                spy = None
                if args.profile and users == 100 and shutil.which("py-spy", path=str(BIN)):
                    svg = HERE / "profile-100-users.txt"
                    spy = subprocess.Popen([str(BIN / "py-spy"), "record", "--pid", str(gproc.pid),
                                            "--format", "raw", "--output", str(svg), "--nonblocking",
                                            "--duration", str(int(args.duration) + 4)],
                                           stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
                    profile_note = f"py-spy profile (collapsed stacks) of the 100-user row: {svg.name}"
                g = load("throughput", "--url", gurl, "--kind", "golden", *common)
                if spy is not None:
                    spy.wait(timeout=30)
                b = load("throughput", "--url", burl, "--kind", "bare", *common)
                results.append((users, g, b))
    say("## 2. Golden path vs a bare aiohttp WebSocket server")
    say()
    kinds = ", ".join(f["type"] for f in rec["frames"])
    say(f"Message \"What is 17 * 23?\", builtin model, BUILTIN_DELAY_MS=0, SQLite in a temp dir. One run = "
        f"{len(rec['frames'])} frames after the send ({kinds}), {rec['bytes']} bytes; the bare server "
        f"replays frames of the same types and sizes. {args.duration:g} s per row after 1 s warm-up; "
        f"one socket per user, the next message sent when the previous run's terminal event arrives.")
    say()
    say("| users | server | runs/s | failed | to agent_started p50 / p99 | to terminal p50 / p99 "
        "| load avg after |")
    say("| --- | --- | --- | --- | --- | --- | --- |")
    for users, g, b in results:
        for name, r in (("goldenpath", g), ("bare", b)):
            say(f"| {users} | {name} | {r['per_s']:.0f} | {r['failed']} "
                f"| {r['started_p50_ms']:.1f} / {r['started_p99_ms']:.1f} ms "
                f"| {r['terminal_p50_ms']:.1f} / {r['terminal_p99_ms']:.1f} ms | {la(r['loadavg'])} |")
    say()
    say("| users | runs/s ratio (golden ÷ bare) | p99 to terminal ratio | "
        "target ≥ 0.5x throughput | target p99 ≤ 3x |")
    say("| --- | --- | --- | --- | --- |")
    for users, g, b in results:
        tr = g["per_s"] / b["per_s"] if b["per_s"] else float("nan")
        pr = g["terminal_p99_ms"] / b["terminal_p99_ms"] if b["terminal_p99_ms"] else float("nan")
        gated = users == 100
        say(f"| {users} | {tr:.3f}x | {pr:.1f}x | {verdict(tr >= 0.5) if gated else 'n/a'} "
            f"| {verdict(pr <= 3.0) if gated else 'n/a'} |")
    if profile_note:
        say()
        say(profile_note)
    say()

    # 3. Memory per idle authenticated socket (fresh processes).
    per_user = 100
    users = max(1, -(-args.sockets // per_user))
    mem_env = {"GOLDENPATH_SECURITY__MAX_SOCKETS_PER_USER": str(per_user)}
    with golden(tmp, mem_env) as (gproc, gurl):
        gm = load("memory", "--url", gurl, "--kind", "golden", "--users", str(users),
                  "--sockets", str(args.sockets), "--pid", str(gproc.pid))
    with bare(tmp, template) as (bproc, burl):
        bm = load("memory", "--url", burl, "--kind", "bare", "--users", str(users),
                  "--sockets", str(args.sockets), "--pid", str(bproc.pid))
    ratio = gm["kib_per_socket"] / bm["kib_per_socket"] if bm["kib_per_socket"] else float("nan")
    say("## 3. Memory per idle authenticated socket")
    say()
    say(f"{users} users x {per_user} sockets each (MAX_SOCKETS_PER_USER raised to {per_user}); "
        "RSS (VmRSS) of the server process before opening and 2 s after the last `ready`.")
    say()
    say("| server | sockets open | errors | RSS before | RSS after | KiB per socket | time to open |")
    say("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in (("goldenpath", gm), ("bare", bm)):
        say(f"| {name} | {r['sockets']} | {r['errors']} | {r['rss_before_kib'] / 1024:.1f} MiB "
            f"| {r['rss_after_kib'] / 1024:.1f} MiB | {r['kib_per_socket']:.1f} | {r['open_s']:.1f} s |")
    say()
    say(f"Ratio goldenpath ÷ bare: {ratio:.2f}x — target ≤ 2x: {verdict(ratio <= 2.0)}")
    if gm["first_error"] or bm["first_error"]:
        say(f"First socket error: {gm['first_error'] or bm['first_error']}")
    say()

    # 4. Soak (fresh process).
    with golden(tmp) as (gproc, gurl):
        sk = load("soak", "--url", gurl, "--users", "20", "--runs", str(args.soak_runs),
                  "--warmup-runs", str(min(500, args.soak_runs // 4)), "--pid", str(gproc.pid))
    s = sk["samples"]
    settled = s["after_warmup"][0]
    drift = (s["end"][0] - settled) / settled
    say(f"## 4. Soak: {sk['runs']} runs, 20 users, {sk['elapsed_s']:.1f} s, {sk['failed']} failed")
    say()
    say("| point | RSS | goldenpath_engines_active |")
    say("| --- | --- | --- |")
    for point in ("before", "after_warmup", "end"):
        say(f"| {point.replace('_', ' ')} | {s[point][0] / 1024:.1f} MiB | {s[point][1]:.0f} |")
    say()
    series = ", ".join(f"{n}: {kib / 1024:.1f}" for n, kib in sk["rss_series"])
    say(f"RSS (MiB) every 250 runs: {series}")
    say()
    say(f"No active engine at the end: {verdict(s['end'][1] == 0)}. RSS drift since warm-up "
        f"{drift * 100:+.1f}% — target within 10%: {verdict(abs(drift) <= 0.10)}")
    say()
    say(f"Load average at end: {la(os.getloadavg())}. Whole run: {time.monotonic() - t_start:.0f} s. "
        f"Command: `make bench` (`{Path(PYTHON).name} -m bench`).")
    Path(args.out).write_text("\n".join(lines) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
