"""The processes of the bench: `goldenpath serve`, the bare server, a private Redis, the load.

Every one is a context manager that leaves nothing behind (processes terminated then killed,
the PostgreSQL database dropped), whatever way the bench ended.
"""

# ruff: noqa: S603 - every subprocess here runs our own argv (this interpreter, goldenpath, redis-server)

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
PYTHON = sys.executable
POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}  # trust auth, as the tests use it


@dataclass(frozen=True)
class Running:
    pid: int
    url: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, path: str, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url}{path} was up")
        try:
            with urllib.request.urlopen(url + path, timeout=1.0) as r:  # noqa: S310 - loopback only
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}{path} not up after {timeout_s} s")


def _raise_nofile() -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextmanager
def process(cmd: list[str], env: dict[str, str], cwd: Path, name: str) -> Iterator[subprocess.Popen]:
    """`cmd` running (its output in cwd/name.log); terminated, then killed, on exit. If the bench
    fails while it runs, the end of its log goes to stderr."""
    path = cwd / f"{name}.log"
    with open(path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=_raise_nofile)
        try:
            yield proc
        except Exception:
            log.flush()
            print(f"--- {Path(cmd[0]).name} {name}, end of its log ---\n{path.read_text()[-3000:]}",
                  file=sys.stderr, flush=True)
            raise
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def http_server(cmd: list[str], env: dict[str, str], cwd: Path, ready_path: str, port: int
                ) -> Iterator[Running]:
    with process(cmd, env, cwd, f"server-{port}") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_up(url, ready_path, proc)
        yield Running(proc.pid, url)


def golden_env(run_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """SQLite in run_dir, the builtin model without pauses, cheap argon2, limits out of the way:
    one socket and one run at a time per user is far below the per-user limits, and
    MAX_ENGINES_TOTAL, the message rate and the per-socket frame pace (50 frames/s by default,
    which alone would cap a one-user row at 50 runs/s) are raised so that no row is refused or
    paced."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOLDENPATH_")}
    env.update({
        "GOLDENPATH_DATABASE__URL": f"sqlite:///{run_dir}/bench.db",
        "GOLDENPATH_MODEL__PROVIDER": "builtin",
        "GOLDENPATH_MODEL__BUILTIN_DELAY_MS": "0",
        "GOLDENPATH_AUTH__ARGON2_TIME_COST": "1",
        "GOLDENPATH_AUTH__ARGON2_MEMORY_KIB": "1024",
        "GOLDENPATH_AUTH__ARGON2_PARALLELISM": "1",
        **RAISED_LIMITS,
        "GOLDENPATH_LOG__LEVEL": "WARNING",
    })
    env.update(extra or {})
    return env


RAISED_LIMITS = {
    "GOLDENPATH_SECURITY__MESSAGES_PER_MINUTE": "1000000",
    "GOLDENPATH_SECURITY__WS_FRAMES_PER_S": "1000000",
    # A user's frames are charged against a byte budget (a chat counts 8 KiB): 64 KiB/s by
    # default, i.e. 8 chats a second per user, which alone held the one-user row at ~8 runs/s.
    "GOLDENPATH_SECURITY__WS_USER_BYTES_PER_S": str(2**40),
    "GOLDENPATH_SECURITY__WS_USER_BYTES_BURST": str(2**40),
    "GOLDENPATH_LIMITS__MAX_PENDING_RUNS_PER_USER": "1000",
    "GOLDENPATH_LIMITS__MAX_ENGINES_TOTAL": "10000",
}
"""The abuse limits `golden_env` raises out of a throughput run's way."""


def at_defaults(names: Iterable[str]) -> dict[str, str]:
    """Those settings (GOLDENPATH_SECTION__FIELD) at the server's defaults, read from its settings model."""
    from container.settings import Settings

    values = {}
    for name in names:
        section, field = name.removeprefix("GOLDENPATH_").lower().split("__")
        values[name] = str(getattr(Settings.model_fields[section].default, field))
    return values


@contextmanager
def golden(tmp: Path, extra: dict[str, str] | None = None) -> Iterator[Running]:
    """One `goldenpath serve`, ready (its own run dir: SQLite there unless `extra` says otherwise)."""
    run_dir = Path(tempfile.mkdtemp(dir=tmp))
    port = free_port()
    cmd = [str(BIN / "goldenpath"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with http_server(cmd, golden_env(run_dir, extra), run_dir, "/ready", port) as running:
        yield running


@contextmanager
def bare(tmp: Path, template: Path) -> Iterator[Running]:
    port = free_port()
    cmd = [PYTHON, "-m", "bench.bare_server", "--port", str(port), "--template", str(template)]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    with http_server(cmd, env, tmp, "/health", port) as running:
        yield running


@contextmanager
def several(count: int, start) -> Iterator[list[Running]]:
    """`count` servers from `start()` (a context manager), started one after the other."""
    with ExitStack() as stack:
        yield [stack.enter_context(start()) for _ in range(count)]


# -- the production profile: PostgreSQL + a private Redis ---------------------------------------


def production_missing() -> str | None:
    """Why the production profile cannot run here, or None."""
    if not shutil.which("redis-server"):
        return "redis-server is not on the PATH"
    try:
        socket.create_connection((POSTGRES["host"], POSTGRES["port"]), timeout=2).close()
    except OSError:
        return f"PostgreSQL is not answering on {POSTGRES['host']}:{POSTGRES['port']}"
    return None


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(**POSTGRES, database="postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (its SQLAlchemy URL); dropped on exit, connections and all."""
    name = f"gp_bench_{secrets.token_hex(6)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{POSTGRES['user']}@{POSTGRES['host']}:{POSTGRES['port']}/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def private_redis(tmp: Path) -> Iterator[str]:
    """A private redis-server (no persistence) on a free port: its URL. Never the machine's Redis."""
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(tmp)]
    with process(cmd, dict(os.environ), tmp, f"redis-{port}") as proc:
        deadline = time.monotonic() + 10
        while not _pong(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def production_profile(tmp: Path, processes: int) -> Iterator[dict[str, str]]:
    """The settings of `processes` goldenpath processes sharing a fresh PostgreSQL database and a
    private Redis, with GOLDENPATH_ENV=production (which checks them: a real secret, no SQLite,
    the Redis bus for more than one process)."""
    with postgres_database() as db_url, private_redis(tmp) as redis_url:
        yield {
            "GOLDENPATH_ENV": "production",
            "GOLDENPATH_SERVER__PROCESSES": str(processes),
            "GOLDENPATH_DATABASE__URL": db_url,
            "GOLDENPATH_BUS__BACKEND": "redis",
            "GOLDENPATH_BUS__REDIS_URL": redis_url,
            "GOLDENPATH_BUS__CHANNEL": f"gp-bench-{secrets.token_hex(6)}",
            "GOLDENPATH_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
            "GOLDENPATH_MCP__SECRET_KEY": secrets.token_urlsafe(48),
        }


# -- the load process -----------------------------------------------------------------------------


def load(*args: str, timeout_s: float = 600) -> dict:
    """Run bench/load.py in its own interpreter; its last stdout line, parsed."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    out = subprocess.run([PYTHON, "-m", "bench.load", *args], env=env, capture_output=True, text=True,
                         timeout=timeout_s, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"load {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def urls(servers: list[Running]) -> str:
    """The load's --url for a group of servers: users alternate between them."""
    return ",".join(s.url for s in servers)
