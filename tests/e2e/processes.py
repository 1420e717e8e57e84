"""`goldenpath serve` as real subprocesses: start on a free port, wait, signal, reap, read the logs.

Every wait has a deadline. The `procs` fixture kills (SIGKILL) whatever a test left running, so
no test leaves a server behind, whatever way it ended. Import the fixture into a test module with
`from tests.e2e.processes import procs_fixture  # noqa: F401` and ask for `procs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from tests.e2e.client import Server
from tests.helpers import free_port

BIN = Path(sys.executable).parent / "goldenpath"
POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432


@dataclass
class ServerProcess:
    """One `goldenpath serve` process; its stdout and stderr go to `log_path`."""

    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    log_file: IO[bytes] = field(repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server(self) -> Server:
        """What the helpers of tests/e2e/client.py take."""
        return Server(base_url=self.base_url, app=None, container=None)  # type: ignore[arg-type]

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def _died(self, waiting_for: str) -> AssertionError:
        return AssertionError(f"{self.name} exited with {self.popen.returncode} while waiting for "
                              f"{waiting_for}; its log:\n{self.log()[-4000:]}")

    # -- waiting ------------------------------------------------------------------------------

    async def wait_listening(self, timeout: float = 20) -> float:
        """Returns (monotonic time) as soon as the port accepts a TCP connection."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                raise self._died("its port")
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1)
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} did not listen within {timeout} s:\n"
                                       f"{self.log()[-4000:]}") from None
                await asyncio.sleep(0.005)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return time.monotonic()

    async def wait_status(self, path: str, status: int = 200, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        client_timeout = aiohttp.ClientTimeout(total=2)
        last: object = None
        async with aiohttp.ClientSession(timeout=client_timeout) as session:
            while True:
                if not self.alive:
                    raise self._died(f"{path} -> {status}")
                try:
                    async with session.get(self.base_url + path) as response:
                        last = response.status
                        if response.status == status:
                            return
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = exc
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name}: {path} did not answer {status} within {timeout} s "
                                       f"(last: {last!r}):\n{self.log()[-4000:]}")
                await asyncio.sleep(0.02)

    async def wait_healthy(self, timeout: float = 20) -> None:
        await self.wait_status("/health", 200, timeout)

    async def wait_ready(self, timeout: float = 20) -> None:
        await self.wait_status("/ready", 200, timeout)

    # -- stopping -----------------------------------------------------------------------------

    def send(self, sig: signal.Signals) -> None:
        if self.alive:
            self.popen.send_signal(sig)

    def terminate(self) -> None:
        self.send(signal.SIGTERM)

    def kill(self) -> None:
        self.send(signal.SIGKILL)

    async def wait_exit(self, timeout: float = 15) -> int:
        """The exit code (negative: killed by that signal); raises if still running at the deadline."""
        deadline = time.monotonic() + timeout
        while (code := self.popen.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} (pid {self.pid}) still running after {timeout} s:\n"
                                   f"{self.log()[-4000:]}")
            await asyncio.sleep(0.02)
        return code

    async def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait for the exit code."""
        self.terminate()
        return await self.wait_exit(timeout)

    def reap(self) -> None:
        """SIGKILL if still running, wait, close the log: never leaves anything behind."""
        if self.alive:
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self.log_file.close()


class ProcessHarness:
    """Starts servers for one test, all of them in its tmp_path; `cleanup()` reaps them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[ServerProcess] = []

    def env(self, database_url: str | None = None, **settings: Any) -> dict[str, str]:
        """The test settings; keyword names are after the GOLDENPATH_ prefix (MODEL__BUILTIN_DELAY_MS)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOLDENPATH_")}
        env.update({
            "GOLDENPATH_ENV": "test",
            "GOLDENPATH_DATABASE__URL": database_url or f"sqlite+aiosqlite:///{self.tmp_path}/gp.db",
            "GOLDENPATH_AUTH__ARGON2_TIME_COST": "1",
            "GOLDENPATH_AUTH__ARGON2_MEMORY_KIB": "1024",
            "GOLDENPATH_AUTH__ARGON2_PARALLELISM": "1",
        })
        env.update({f"GOLDENPATH_{name.upper()}": str(value) for name, value in settings.items()})
        return env

    def start(self, env: dict[str, str], *, port: int | None = None,
              host: str = "127.0.0.1") -> ServerProcess:
        """Spawn `goldenpath serve`; returns at once (use wait_listening / wait_healthy / wait_ready)."""
        name = f"server{len(self.processes) + 1}"
        port = port or free_port()
        log_path = self.tmp_path / f"{name}.log"
        log_file = log_path.open("wb")
        try:
            # cwd is tmp_path so that no developer's .env file changes the settings under test.
            popen = subprocess.Popen([str(BIN), "serve", "--host", host, "--port", str(port)],
                                     env=env, cwd=self.tmp_path, stdin=subprocess.DEVNULL,
                                     stdout=log_file, stderr=subprocess.STDOUT)
        except BaseException:
            log_file.close()
            raise
        process = ServerProcess(name=name, port=port, env=env, log_path=log_path, popen=popen,
                                log_file=log_file)
        self.processes.append(process)
        return process

    async def start_ready(self, env: dict[str, str], timeout: float = 20) -> ServerProcess:
        process = self.start(env)
        await process.wait_ready(timeout)
        return process

    def logs(self) -> str:
        return "\n".join(p.log() for p in self.processes)

    def cleanup(self) -> None:
        for process in self.processes:
            process.reap()


@pytest.fixture(name="procs")
def procs_fixture(tmp_path: Path) -> Iterator[ProcessHarness]:
    harness = ProcessHarness(tmp_path)
    try:
        yield harness
    finally:
        harness.cleanup()


# -- a database that is slow to answer at start-up ----------------------------------------------


class GatedProxy:
    """A TCP relay to a real server that holds every new connection until `open()` is called.

    Put between goldenpath and PostgreSQL, it is a database that is slow to answer while the
    server boots: the boot waits, the listener is already open, and clients see the start-up window.
    `cut()` is a database that goes away: connections drop and new ones are refused until `open()`.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._gate = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.held = 0
        self._refusing = False

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def open(self) -> None:
        self._refusing = False
        self._gate.set()

    def cut(self) -> None:
        self._refusing = True
        for writer in list(self._writers):
            writer.close()

    @property
    def opened(self) -> bool:
        return self._gate.is_set()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._relay(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.close()
            return
        self._writers.add(writer)
        up_writer = None
        try:
            if not self._gate.is_set():
                self.held += 1
                await self._gate.wait()
            up_reader, up_writer = await asyncio.open_connection(*self._target)
            self._writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            for each in (writer, up_writer):
                if each is not None:
                    each.close()
                    self._writers.discard(each)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        self._writers.clear()


async def postgres_available() -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(POSTGRES_HOST, POSTGRES_PORT), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database (its name); dropped afterwards, connections and all."""
    import asyncpg

    name = f"gp_e2e_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, user="postgres",
                                  database="postgres", timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# -- a private Redis ----------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A private `redis-server` (no persistence) on its own port: stop it, start it again, always reap it.

    Never the machine's Redis: a test that stops this one disturbs nothing else.
    """

    tmp_path: Path
    port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        path = self.tmp_path / f"redis-{self.port}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def start(self, timeout: float = 10) -> None:
        """Spawn it (on the same port every time) and return once it answers PING."""
        if self.alive:
            raise RuntimeError(f"redis on port {self.port} is already running")
        self.starts += 1
        with (self.tmp_path / f"redis-{self.port}.log").open("ab") as log_file:
            self.popen = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.tmp_path)],
                cwd=self.tmp_path, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not await self._pong():
            if not self.alive:
                raise AssertionError(f"redis-server exited with {self.popen.returncode}:\n"
                                     f"{self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not answer on {self.port} within {timeout} s")
            await asyncio.sleep(0.01)

    async def _pong(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.readline(), 1)).startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self, timeout: float = 10) -> int:
        """SIGTERM and wait for it to exit (its port is free again afterwards)."""
        if self.popen is None:
            raise RuntimeError("redis was never started")
        if self.alive:
            self.popen.terminate()
        deadline = time.monotonic() + timeout
        while (code := self.popen.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server (pid {self.popen.pid}) still running after {timeout} s")
            await asyncio.sleep(0.01)
        return code

    async def kill(self, timeout: float = 10) -> int:
        """SIGKILL, as a crash would, and wait for it to exit."""
        if self.popen is None:
            raise RuntimeError("redis was never started")
        self.popen.kill()
        return await self.stop(timeout)

    def reap(self) -> None:
        if self.popen is not None:
            if self.popen.poll() is None:
                self.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=10)


@contextlib.asynccontextmanager
async def private_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A started private Redis, killed afterwards whatever happened."""
    redis = RedisServer(tmp_path)
    try:
        await redis.start()
        yield redis
    finally:
        redis.reap()


# -- a private PostgreSQL cluster ---------------------------------------------------------------


def _postgres_bin(tool: str) -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"))
    if not found:
        raise AssertionError(f"no PostgreSQL {tool} under /usr/lib/postgresql/*/bin")
    return found[-1]


@dataclass
class PostgresCluster:
    """A private PostgreSQL cluster (initdb) on its own port, trust auth: stop it, start it again.

    Never the machine's PostgreSQL: a test that stops this one disturbs nothing else. PostgreSQL
    refuses to run as root, so when the test runs as root the cluster runs as the `postgres`
    user, in a directory of its own under the system's temporary directory (pytest's tmp_path
    is not readable by another user). `remove()` stops it and deletes its directory.
    """

    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gp-pg-")))
    starts: int = 0

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        command = [str(_postgres_bin(tool)), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, cwd=self.directory, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} exited with {done.returncode}:\n"
                                 f"{done.stdout.decode(errors='replace')[-2000:]}"
                                 f"{done.stderr.decode(errors='replace')[-2000:]}\n{self.log()[-2000:]}")

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")

    async def start(self, timeout: float = 30) -> None:
        """`pg_ctl start` (on the same port every time) and return once it accepts connections."""
        self.starts += 1
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        await asyncio.to_thread(self._run, "pg_ctl", "-D", str(self.data), "-l", str(self.log_path),
                                "-o", options, "-w", "-t", str(int(timeout)), "start",
                                timeout=timeout + 10)

    async def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        """`pg_ctl stop -m fast` (sessions are ended, the port is free afterwards)."""
        await asyncio.to_thread(self._run, "pg_ctl", "-D", str(self.data), "-m", mode, "-w",
                                "-t", str(int(timeout)), "stop", timeout=timeout + 10)

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    async def create_database(self, name: str) -> None:
        import asyncpg

        admin = await asyncpg.connect(host="127.0.0.1", port=self.port, user="postgres",
                                      database="postgres", timeout=10)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    def remove(self) -> None:
        """Stop it however it stands (immediate mode), and delete its directory."""
        if self.running:
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def private_postgres(database: str = "goldenpath") -> AsyncIterator[PostgresCluster]:
    """A started private PostgreSQL cluster with an empty `database`; stopped and deleted afterwards."""
    cluster = PostgresCluster()
    try:
        await asyncio.to_thread(cluster.init)
        await cluster.start()
        await cluster.create_database(database)
        yield cluster
    finally:
        await asyncio.to_thread(cluster.remove)
