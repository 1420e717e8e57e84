"""Fair under abuse: normal users' p99 to the terminal event alone and beside hostile sockets, and RSS.

`.venv/bin/python -m bench.fairness [--users 50 --sockets 20 --phase 20 --pace 2.5]` starts one
`goldenpath serve` (SQLite, the builtin model, every limit at its default for every user), keeps
`--users` users chatting like people (one socket each, a message every `--pace` s, or at once after
an answer that took longer), and runs bench/hostile.py beside them, one kind after the other, then
all kinds at once, with a quiet phase between them. Prints markdown, with the CPU used per wall
second by the server, this process (the normal users) and the hostile processes.
`--pace 0` is a closed loop (the next message as soon as the answer ends): a saturated server, whose
p99 is its queue and grows with any work at all, a hostile user's allowed share included.
tests/e2e/test_fairness.py runs `measure` shorter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.hostile import KINDS
from bench.load import cpu_s, login_users, one_run, open_sockets, pct, rss_kib, session
from bench.servers import RAISED_LIMITS, at_defaults

HERE = Path(__file__).resolve().parent
# bench/servers.py raises the per-user limits for throughput runs; here every user, normal or
# hostile, meets the defaults (the normal users' pace keeps within them).
SERVER_ENV = at_defaults(RAISED_LIMITS)
CLOSED_LOOP_ENV = {"GOLDENPATH_SECURITY__MESSAGES_PER_MINUTE": "1000000"}
# Each kind with `--sockets` sockets; "all": `--sockets` in all, split over the kinds (the issue's
# "20 hostile sockets", all kinds together); "all-x4": `--sockets` of each kind at once.
PHASES = (*KINDS, "all", "all-x4")


@dataclass
class NormalUsers:
    """Users in a closed loop; each run's (sent, ended) kept, so any window's latency can be read."""

    url: str
    users: int
    pace_s: float = 0.0
    runs: list[tuple[float, float]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        tokens = await login_users([self.url], self.users, f"normal_{os.getpid()}_{time.monotonic_ns()}_")
        async with session() as s:
            sockets = await open_sockets(s, [self.url], tokens)
            await asyncio.gather(*(self._user(ws) for ws in sockets))
            for ws in sockets:
                await ws.close()

    async def _user(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                _, _, _, ok = await asyncio.wait_for(one_run(ws), 60)
            except (TimeoutError, RuntimeError, aiohttp.ClientError) as exc:
                self.failed.append(repr(exc))
                return
            if not ok:
                self.failed.append("a run did not complete")
            ended = time.monotonic()
            self.runs.append((sent, ended))
            await asyncio.sleep(max(0.0, sent + self.pace_s - ended))

    def p99(self, start: float, end: float) -> tuple[float, int]:
        """p99 (s) of the runs sent in [start, end) and ended by end, and how many there were."""
        took = [e - s for s, e in self.runs if start <= s and e <= end]
        return pct(took, 99), len(took)


class Hostile:
    """bench/hostile.py as its own process: started, awaited ready, stopped with SIGTERM for its report."""

    def __init__(self, url: str, kind: str, sockets: int) -> None:
        self.args = [sys.executable, "-m", "bench.hostile", "--url", url, "--kind", kind,
                     "--sockets", str(sockets)]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(HERE.parent))
        self.proc = await asyncio.create_subprocess_exec(*self.args, env=env, stdout=asyncio.subprocess.PIPE)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError(f"{self.args} ended before it was ready")

    async def stop(self) -> dict:
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            out = await asyncio.wait_for(self.proc.stdout.read(), 30)
            await asyncio.wait_for(self.proc.wait(), 30)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        return json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}


class _Cpu:
    """CPU seconds per wall second of the server, the hostile processes and this (normal users') process."""

    def __init__(self, server: int, hostiles: Sequence[Hostile] = ()) -> None:
        self.server, self.at = server, time.monotonic()
        self.start = {"server": cpu_s(server), "normal": cpu_s(os.getpid()),
                      "hostile": sum(cpu_s(h.proc.pid) for h in hostiles)}

    def share(self, hostiles: Sequence[Hostile]) -> dict[str, float]:
        wall = time.monotonic() - self.at
        now = {"server": cpu_s(self.server), "normal": cpu_s(os.getpid()),
               "hostile": sum(cpu_s(h.proc.pid) for h in hostiles)}
        return {k: round((now[k] - self.start[k]) / wall, 2) for k in now}


def _hostiles(url: str, phase: str, sockets: int) -> list[Hostile]:
    match phase:
        case "all":
            return [Hostile(url, kind, max(1, sockets // len(KINDS))) for kind in KINDS]
        case "all-x4":
            return [Hostile(url, kind, sockets) for kind in KINDS]
        case kind:
            return [Hostile(url, kind, sockets)]


async def _rss_during(pid: int, seconds: float) -> float:
    """The highest RSS (MiB) sampled every 0.2 s for `seconds`."""
    top, deadline = 0.0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        top = max(top, rss_kib(pid) / 1024)
        await asyncio.sleep(0.2)
    return top


async def _settled_rss(pid: int, longest: float) -> float:
    """RSS (MiB) once it stops falling (1 s apart), `longest` s at most."""
    deadline, last = time.monotonic() + longest, rss_kib(pid) / 1024
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        now = rss_kib(pid) / 1024
        if now >= last - 0.5:
            return now
        last = now
    return last


async def measure(url: str, pid: int, *, users: int, sockets: int, phase_s: float, quiet_s: float,
                  pace_s: float, kinds: tuple[str, ...] = PHASES) -> dict:
    """Normal users alone, then beside each kind of hostile socket (and all at once); a row per phase."""
    normal = NormalUsers(url, users, pace_s)
    load = asyncio.create_task(normal.run())
    try:
        while len(normal.runs) < users:  # warm: every socket open, the first burst served
            if load.done():
                await load
                raise RuntimeError("the normal users stopped before they warmed up")
            await asyncio.sleep(0.1)
        await asyncio.sleep(quiet_s)
        rss_before = await _settled_rss(pid, quiet_s)
        start, cpu = time.monotonic(), _Cpu(pid)
        await asyncio.sleep(phase_s)
        alone, n = normal.p99(start, time.monotonic())
        rows = [{"phase": "alone", "p99_s": alone, "runs": n, "rss_during": rss_kib(pid) / 1024,
                 "cpu": cpu.share(())}]
        for kind in kinds:
            hostiles = _hostiles(url, kind, sockets)
            await asyncio.gather(*(h.start() for h in hostiles))
            start, cpu = time.monotonic(), _Cpu(pid, hostiles)
            rss_during = await _rss_during(pid, phase_s)
            p99, n = normal.p99(start, time.monotonic())
            used = cpu.share(hostiles)
            seen = await asyncio.gather(*(h.stop() for h in hostiles))
            rss_after = await _settled_rss(pid, quiet_s)
            print(f"{kind}: p99 {p99:.3f} s vs {alone:.3f} s alone, "
                  f"RSS {rss_during:.0f} -> {rss_after:.0f} MiB", file=sys.stderr, flush=True)
            rows.append({"phase": kind, "p99_s": p99, "runs": n, "ratio": p99 / alone,
                         "rss_during": rss_during, "rss_after": rss_after, "hostile": seen, "cpu": used})
        return {"users": users, "sockets": sockets, "phase_s": phase_s, "pace_s": pace_s,
                "rss_before": rss_before,
                "rows": rows, "failed": normal.failed[:3]}
    finally:
        normal.stop.set()
        await asyncio.wait_for(load, 120)


def markdown(result: dict) -> str:
    pace = f"a message every {result['pace_s']:g} s" if result["pace_s"] else "in a closed loop"
    lines = [f"{result['users']} normal users, {pace}, {result['sockets']} hostile sockets of each "
             f"kind, {result['phase_s']:.0f} s per phase; RSS before: {result['rss_before']:.1f} MiB.", "",
             "| beside | runs | p99 to terminal | ratio to alone | RSS during (max) | RSS after "
             "| CPU server / normal / hostile | hostile side |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        seen = "; ".join(_seen(s) for s in row.get("hostile", ()))
        ratio = f"{row['ratio']:.2f}x" if "ratio" in row else ""
        after = f"{row['rss_after']:.1f} MiB" if "rss_after" in row else ""
        lines.append(f"| {row['phase']} | {row['runs']} | {row['p99_s'] * 1000:.0f} ms | {ratio} | "
                     f"{row['rss_during']:.1f} MiB | {after} | {_cpu(row['cpu'])} | {seen} |")
    return "\n".join(lines)


def _cpu(used: dict[str, float]) -> str:
    return f"{used['server']:.2f} / {used['normal']:.2f} / {used['hostile']:.2f}"


def _seen(s: dict) -> str:
    closed = s.get("closed_after_s") or []
    text = f"{s['kind']}: {s['frames']} frames sent, closes {s['closes']}"
    if closed:
        text += f", {len(closed)} cut off after {min(closed)} to {max(closed)} s"
    return text


def main() -> None:
    from bench.servers import golden

    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--sockets", type=int, default=20)
    parser.add_argument("--phase", type=float, default=20.0)
    parser.add_argument("--pace", type=float, default=2.5, help="s between a user's messages; 0: closed loop")
    parser.add_argument("--quiet", type=float, default=5.0)
    parser.add_argument("--kinds", default=",".join(PHASES))
    parser.add_argument("--delay-ms", default="15", help="the builtin model's pause between pieces")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="goldenpath-fairness-"))
    extra = {**SERVER_ENV, **(CLOSED_LOOP_ENV if args.pace == 0 else {}),
             "GOLDENPATH_MODEL__BUILTIN_DELAY_MS": args.delay_ms}
    with golden(tmp, extra) as server:
        result = asyncio.run(measure(server.url, server.pid, users=args.users, sockets=args.sockets,
                                     phase_s=args.phase, quiet_s=args.quiet, pace_s=args.pace,
                                     kinds=tuple(args.kinds.split(","))))
    print(markdown(result))
    print(json.dumps(result), file=sys.stderr)


if __name__ == "__main__":
    main()
