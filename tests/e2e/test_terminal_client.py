"""`goldenpath chat` as a person uses it: a real client on a pseudo-terminal against a real server process."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.client import PASSWORD
from tests.e2e.processes import (  # noqa: F401
    BIN,
    ProcessHarness,
    ServerProcess,
    free_port,
    procs_fixture,
)

CTRL_C, CTRL_D = "\x03", "\x04"
PROMPT = r"you> "
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _take_terminal() -> None:
    # In the child, after setsid(): the pty becomes its controlling terminal, so getpass can open
    # /dev/tty and a typed Ctrl-C is a SIGINT for the client, as in a real terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """One process on a pty: `type` what a person types, `expect` what the screen shows; with deadlines."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        try:
            self.popen = subprocess.Popen([str(BIN), *args], stdin=slave, stdout=slave, stderr=slave,
                                          env=env, cwd=cwd, start_new_session=True,
                                          preexec_fn=_take_terminal)
        finally:
            os.close(slave)  # only the child holds it: its exit then reads as EIO here
        self._fd = master
        self._raw = b""
        self._seen = 0  # what expect() has consumed so far
        self._eof = False

    @property
    def screen(self) -> str:
        """Everything shown so far, without \\r and colour or cursor sequences."""
        return ANSI.sub("", self._raw.decode(errors="replace")).replace("\r", "")

    def _pump(self) -> None:
        while not self._eof and select.select([self._fd], [], [], 0)[0]:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:  # EIO: the child is gone and so is the pty's other end
                chunk = b""
            self._raw += chunk
            self._eof = not chunk

    async def expect(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        # Polls with asyncio.sleep: the test's event loop may be running a relay meanwhile.
        deadline = time.monotonic() + timeout
        while True:
            self._pump()
            match = re.compile(pattern).search(self.screen, self._seen)
            if match:
                self._seen = match.end()
                return match
            if time.monotonic() > deadline or (self._eof and self.popen.poll() is not None):
                raise AssertionError(f"no {pattern!r} within {timeout} s (exit code {self.popen.poll()}); "
                                     f"the terminal shows:\n{self.screen[-3000:]}")
            await asyncio.sleep(0.01)

    def type(self, text: str) -> None:
        os.write(self._fd, text.encode())

    async def wait_exit(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.popen.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout} s; the terminal shows:\n"
                                     f"{self.screen[-3000:]}")
            self._pump()  # keep draining, or a child writing to a full pty would never exit
            await asyncio.sleep(0.02)
        self._pump()
        return code

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        os.close(self._fd)


@pytest.fixture(name="terminals")
def terminals_fixture() -> Iterator[list[Terminal]]:
    """Every Terminal a test opens is killed and closed afterwards, however the test ended. Another
    module imports `terminals_fixture` and asks for `terminals`."""
    opened: list[Terminal] = []
    try:
        yield opened
    finally:
        for terminal in opened:
            terminal.close()


def client_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOLDENPATH_")}
    return {**env, "TERM": "xterm", **extra}


async def register(server: ServerProcess, username: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(
        server.base_url + "/api/auth/register", json={"username": username, "password": PASSWORD},
        timeout=aiohttp.ClientTimeout(total=20),
    ) as response:
        assert response.status == 201, await response.text()


async def start(procs: ProcessHarness, delay_ms: int = 0, **settings: str) -> ServerProcess:
    server = await procs.start_ready(procs.env(model__builtin_delay_ms=delay_ms, **settings))
    await register(server, "alice")
    return server


def open_chat(terminals: list[Terminal], server: ServerProcess, tmp_path: Path, *args: str,
              **env: str) -> Terminal:
    terminal = Terminal(["chat", "--url", server.base_url, "--user", "alice", *args], client_env(**env),
                        tmp_path)
    terminals.append(terminal)
    return terminal


async def log_in(terminal: Terminal) -> None:
    # Typed only once the prompt shows: getpass turns echo off before it writes the prompt.
    await terminal.expect(r"Password for alice: ")
    terminal.type(PASSWORD + "\n")
    await terminal.expect(PROMPT)


async def test_password_is_not_echoed_and_one_exchange_shows_the_tool_call(
        procs: ProcessHarness, terminals: list[Terminal], tmp_path: Path) -> None:
    server = await start(procs)
    chat = open_chat(terminals, server, tmp_path)
    await log_in(chat)
    assert PASSWORD not in chat.screen

    chat.type("What is 17 * 23?\n")
    await chat.expect(r'→ tool calculator \{"expression": "17 \* 23"\}\n')
    await chat.expect(r"← 391 \(\d+ ms\)\n")
    await chat.expect(r"17 \* 23 = 391\.\n")
    await chat.expect(PROMPT)

    chat.type(CTRL_D)
    assert await chat.wait_exit() == 0
    assert PASSWORD not in chat.screen


async def test_ctrl_c_stops_the_run_not_the_client(
        procs: ProcessHarness, terminals: list[Terminal], tmp_path: Path) -> None:
    server = await start(procs, delay_ms=80)
    chat = open_chat(terminals, server, tmp_path)
    await log_in(chat)

    # The builtin model answers this with its help text, two words every 80 ms: seconds to stop it in.
    chat.type("tell me a story\n")
    await chat.expect(r"built-in")
    chat.type(CTRL_C)
    stopped = await chat.expect(r"\(stopped\)\n")
    assert "connect a real model" not in chat.screen[:stopped.start()]
    await chat.expect(PROMPT)
    assert chat.popen.poll() is None

    chat.type("What is 2 + 2?\n")
    await chat.expect(r"← 4 \(\d+ ms\)\n")
    await chat.expect(r"2 \+ 2 = 4\.\n")
    await chat.expect(PROMPT)

    chat.type(CTRL_C)  # at the prompt: leave, and that is no failure
    assert await chat.wait_exit() == 0
    assert "Traceback" not in chat.screen


async def test_one_message_as_json_lines_for_scripts(procs: ProcessHarness, tmp_path: Path) -> None:
    server = await start(procs)
    done = subprocess.run(
        [str(BIN), "chat", "--url", server.base_url, "--user", "alice", "--json",
         "--message", "What is 2 + 2?"],
        env=client_env(GOLDENPATH_PASSWORD=PASSWORD), cwd=tmp_path, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 0, done.stderr
    frames = [json.loads(line) for line in done.stdout.splitlines()]
    types = [frame["type"] for frame in frames]
    assert types[:2] == ["ready", "ack"]
    assert {"agent_started", "tool_executing", "tool_completed", "agent_message_delta"} <= set(types)
    assert types[-1] == "agent_completed"
    assert frames[-1]["data"]["text"] == "2 + 2 = 4."


async def test_wrong_password_exits_2_with_the_reason(
        procs: ProcessHarness, terminals: list[Terminal], tmp_path: Path) -> None:
    server = await start(procs)
    chat = open_chat(terminals, server, tmp_path)
    await chat.expect(r"Password for alice: ")
    chat.type("not the password\n")
    await chat.expect(r"login failed: Wrong username or password\.\n")
    assert await chat.wait_exit() == 2
    assert "not the password" not in chat.screen


async def test_an_unreachable_server_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN), "chat", "--url", f"http://127.0.0.1:{free_port()}", "--user", "alice", "--message", "hi"],
        env=client_env(GOLDENPATH_PASSWORD=PASSWORD), cwd=tmp_path, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "cannot reach" in done.stderr


@pytest.mark.slow
async def test_server_restart_reconnects_and_a_new_secret_ends_the_session(
        procs: ProcessHarness, terminals: list[Terminal], tmp_path: Path) -> None:
    server = await start(procs)
    chat = open_chat(terminals, server, tmp_path)
    await log_in(chat)

    # SIGTERM: the server closes its sockets with 1001; the client comes back to the next server.
    assert await server.stop() == 0
    await chat.expect(r"reconnecting…")
    again = procs.start(server.env, port=server.port)
    await again.wait_ready()
    chat.type("What is 3 * 3?\n")
    await chat.expect(r"3 \* 3 = 9\.\n", timeout=30)
    await chat.expect(PROMPT)

    # Tokens signed with the old secret mean nothing to a server with a new one: 4401 on reconnect.
    assert await again.stop() == 0
    renewed = procs.start({**server.env, "GOLDENPATH_AUTH__JWT_SECRET": "x" * 40}, port=server.port)
    await renewed.wait_ready()
    await chat.expect(r"session expired", timeout=30)
    assert await chat.wait_exit() == 2


class Relay:
    """A TCP relay in front of a server whose connections can all be cut at once: a network drop."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._down_until = 0.0
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._relay(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._down_until:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
        self._writers.discard(writer)

    def cut(self, down_s: float = 0.0) -> None:
        """Drop every open connection without a WebSocket close frame, and new ones for `down_s`."""
        self._down_until = time.monotonic() + down_s
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.mark.slow
async def test_a_dropped_connection_mid_run_resumes_from_the_last_cursor(
        procs: ProcessHarness, terminals: list[Terminal], tmp_path: Path) -> None:
    server = await start(procs, delay_ms=80)
    relay = Relay(server.port)
    await relay.start()
    try:
        chat = Terminal(["chat", "--url", f"http://127.0.0.1:{relay.port}", "--user", "alice"],
                        client_env(), tmp_path)
        terminals.append(chat)
        await log_in(chat)
        chat.type("tell me a story\n")
        await chat.expect(r"built-in")
        relay.cut(down_s=0.3)  # the first attempt fails: the run streams on, unseen, until the second
        await chat.expect(r"reconnecting…\n")
        await chat.expect(r"connect a real model\.\n")
        await chat.expect(PROMPT)
    finally:
        await relay.close()

    # Every piece of the answer shown once, in order: the replay filled the gap and repeated nothing.
    answer = await last_answer(server)
    shown = chat.screen.split("tell me a story\n", 1)[1].rsplit(PROMPT, 1)[0]
    shown = re.sub(r"⠋ thinking…|\n?reconnecting….*\n", "", shown).strip()
    assert shown == answer


async def last_answer(server: ServerProcess) -> str:
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(base_url=server.base_url, timeout=timeout) as http:
        async with http.post("/api/auth/login", json={"username": "alice", "password": PASSWORD}) as response:
            auth = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
        async with http.get("/api/threads", headers=auth) as response:
            thread_id = (await response.json())["threads"][0]["thread_id"]
        async with http.get(f"/api/threads/{thread_id}/messages", headers=auth) as response:
            messages = (await response.json())["messages"]
    return messages[-1]["text"]
