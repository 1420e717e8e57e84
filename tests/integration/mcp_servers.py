"""Real MCP servers for tests, built with the official SDK (`mcp`): the same code a real server runs.

`HttpMcpServer` serves them over Streamable HTTP on a free port of 127.0.0.1 (uvicorn, in a process
of its own); `stdio_command()` is the command line of the same tools as a stdio server. Both run
this file as a script.

Tools: echo_token (the Authorization header it saw), add, fail (an error result), slow (sleeps),
huge (a long text), lookup (annotated read-only and idempotent), whoami (the X-User header).
"""

from __future__ import annotations

import asyncio
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations

START_TIMEOUT_S = 15.0  # a busy 2-core machine starts a thread and uvicorn in well under this
STOP_TIMEOUT_S = 10.0


def build_server(name: str = "test-tools") -> MCPServer:
    server = MCPServer(name, log_level="WARNING")

    @server.tool(description="Returns the Authorization header this call carried ('' without one).")
    def echo_token(ctx: Context) -> str:
        return (ctx.headers or {}).get("authorization", "")

    @server.tool(description="Returns the X-User header this call carried.")
    def whoami(ctx: Context) -> str:
        return (ctx.headers or {}).get("x-user", "")

    @server.tool(description="Adds two integers.")
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(description="Always fails, with the reason given ('token': the Authorization header).")
    def fail(ctx: Context, reason: str = "the tool failed on purpose") -> str:
        if reason == "token":  # a careless server's error that repeats what it was sent
            raise ToolError("refused " + (ctx.headers or {}).get("authorization", ""))
        raise ToolError(reason)

    @server.tool(description="Sleeps for the seconds given, then answers.")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return f"slept {seconds:g} s"

    @server.tool(description="Returns a text of the length given (1 MB by default).")
    def huge(chars: int = 1_000_000) -> str:
        return "x" * chars

    @server.tool(description="Looks a key up; changes nothing.",
                 annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True))
    def lookup(key: str) -> str:
        return f"value of {key}"

    return server


class HttpMcpServer:
    """These tools over Streamable HTTP on 127.0.0.1 and a free port, in a process of their own (as a
    real server is), until `stop()` or the end of the `with`."""

    def __init__(self, name: str = "test-tools") -> None:
        self._name = name
        self._process: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> HttpMcpServer:
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "http", self._name],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        ready: queue.Queue[str] = queue.Queue()
        # Read in a thread, so the wait for the first line has a deadline.
        threading.Thread(target=lambda: ready.put(self._process.stdout.readline()),  # type: ignore[union-attr]
                         daemon=True).start()
        try:
            line = ready.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self.stop()
            raise TimeoutError(f"the test MCP server did not start within {START_TIMEOUT_S} s") from None
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the test MCP server did not start: {line!r}")
        self.port = int(line.removeprefix("listening on ").strip())
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> HttpMcpServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


async def _serve_http(name: str) -> None:
    """Serve on a free port of 127.0.0.1; print "listening on PORT" once accepting."""
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # a response's body waits ~40 ms behind its headers on a reused connection (Nagle, delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    # Any Host header: tests reach it by names of their own (a resolver maps them to 127.0.0.1).
    app = build_server(name).streamable_http_app(
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)  # the parent's deadline bounds this
    if server.started:
        print(f"listening on {sock.getsockname()[1]}", flush=True)
    await serving


def closed_port_url(path: str = "/mcp") -> str:
    """A URL of 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def stdio_command() -> list[str]:
    """The command line of these tools as a stdio MCP server."""
    return [sys.executable, str(Path(__file__).resolve()), "stdio"]


if __name__ == "__main__":
    if sys.argv[1:] == ["stdio"]:
        build_server("test-tools-stdio").run("stdio")
    elif len(sys.argv) == 3 and sys.argv[1] == "http":
        asyncio.run(_serve_http(sys.argv[2]))
    else:
        sys.exit("usage: mcp_servers.py stdio | http NAME")
