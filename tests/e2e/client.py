"""A small test client built on libraries that are not the project's own (aiohttp client, websockets)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import websockets
from aiohttp import web

TERMINAL = {"agent_completed", "agent_error", "agent_cancelled"}
PASSWORD = "correct horse battery staple"


@dataclass
class Server:
    base_url: str
    app: web.Application
    container: Any

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/ws"


@dataclass
class User:
    server: Server
    username: str
    user_id: str
    token: str
    frames: list[dict[str, Any]] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def http(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.request(
            method, self.server.base_url + path, headers=self.auth, **kwargs
        ) as response:
            body = await response.text()
            return response.status, (json.loads(body) if body else None)

    def connect(self) -> Any:
        # No keepalive pings of our own (the server sends its heartbeat): websockets draws their
        # payload from the global `random`, and a draw on another thread while hypothesis
        # generates an example (test_fuzz_frames) made hypothesis warn, once the test outlasted
        # the 20 s ping interval on a busy machine.
        return websockets.connect(self.server.ws_url, additional_headers=self.auth, ping_interval=None,
                                  max_size=2**22, open_timeout=10, max_queue=None)


async def register(server: Server, username: str | None = None) -> User:
    name = username or f"user_{secrets.token_hex(4)}"
    async with aiohttp.ClientSession() as session:
        async with session.post(server.base_url + "/api/auth/register",
                                json={"username": name, "password": PASSWORD}) as response:
            assert response.status == 201, await response.text()
            user_id = (await response.json())["user_id"]
        async with session.post(server.base_url + "/api/auth/login",
                                json={"username": name, "password": PASSWORD}) as response:
            assert response.status == 200, await response.text()
            token = (await response.json())["access_token"]
    return User(server=server, username=name, user_id=user_id, token=token)


Frame = dict[str, Any]


# -- reading frames: every read has a deadline for the whole wait, not only for each frame -----


async def recv(ws: Any, timeout: float = 10) -> Frame:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def read_until(ws: Any, done: Callable[[Frame], bool], into: list[Frame] | None = None,
                     timeout: float = 10) -> Frame:
    """Read frames (all kept in `into`) until one satisfies `done`; that one is returned."""
    into = [] if into is None else into
    async with asyncio.timeout(timeout):
        while True:
            into.append(frame := await recv(ws, timeout))
            if done(frame):
                return frame


async def frames_until(ws: Any, done: Callable[[Frame], bool], timeout: float = 20) -> list[Frame]:
    """Every frame up to and including the first that satisfies `done`, within `timeout` in all."""
    frames: list[Frame] = []
    await read_until(ws, done, frames, timeout)
    return frames


async def until_type(ws: Any, kind: str, timeout: float = 10) -> list[Frame]:
    return await frames_until(ws, lambda frame: frame["type"] == kind, timeout)


async def next_of(ws: Any, kinds: set[str], timeout: float = 10) -> Frame:
    """The next frame of one of these types (the user's runs stream on the same socket)."""
    return await read_until(ws, lambda frame: frame["type"] in kinds, timeout=timeout)


async def until_ready(ws: Any) -> Frame:
    frame = await recv(ws)
    assert frame["type"] == "ready", frame
    return frame


async def run_events(ws: Any, run_id: str, timeout: float = 20) -> list[Frame]:
    """The run's events up to its terminal one; other frames are skipped."""
    frames = await frames_until(ws, lambda f: f.get("run_id") == run_id and f["type"] in TERMINAL, timeout)
    return [frame for frame in frames if frame.get("run_id") == run_id]


async def until_runs_end(ws: Any, runs: int, timeout: float = 20) -> list[Frame]:
    """Every frame until `runs` terminal events have come."""
    frames: list[Frame] = []
    await read_until(ws, lambda _: sum(f["type"] in TERMINAL for f in frames) >= runs, frames, timeout)
    return frames


# -- talking --------------------------------------------------------------------------------------


async def chat(ws: Any, message: str, **fields: Any) -> tuple[Frame, list[Frame]]:
    """Send one chat frame; return its ack and the run's events up to the terminal one."""
    await ws.send(json.dumps({"type": "chat", "message": message, **fields}))
    ack = await recv(ws)
    while ack.get("run_id") and ack["type"] != "ack":  # the user's other runs stream here too
        ack = await recv(ws)
    assert ack["type"] == "ack", ack
    return ack, await run_events(ws, ack["run_id"])


async def start_chat(ws: Any, message: str, **fields: Any) -> Frame:
    """Send one chat frame and return its ack, without waiting for the run."""
    await ws.send(json.dumps({"type": "chat", "message": message, **fields}))
    return (await until_type(ws, "ack"))[-1]
