"""Clients of the load tests that live through faults: each user keeps one socket open (reconnecting
to any living process and resuming by cursor when it drops) and chats in a closed loop, sending a
message again with its client_message_id after `server_not_ready`, a 503 or a lost socket.
Everything a user's sockets received is kept, socket by socket, for the checks afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import aiohttp
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from tests.e2e.client import TERMINAL, User
from tests.e2e.cluster import Frame
from tests.e2e.processes import ServerProcess

ACK_DEADLINE_S = 40.0  # a message is retried this long before the client calls it lost
RECONNECT_DEADLINE_S = 30.0
TERMINAL_PATIENCE_S = 16.0  # a user waits this long for a run's end before sending the next message


def says(index: int, secret: str) -> str:
    return (f"Remember that my vault code is {secret}", "What is my vault code?",
            "What is 17 * 23?", "hello")[index % 4]


# -- the processes a client may talk to -------------------------------------------------------


@dataclasses.dataclass
class Fleet:
    processes: list[ServerProcess]

    def living(self, start: int) -> list[ServerProcess]:
        alive = [p for p in self.processes if p.alive]
        return alive[start % len(alive):] + alive[:start % len(alive)] if alive else []


# -- one user: a socket kept open, and a closed loop of messages ------------------------------


class Client:
    def __init__(self, index: int, user: User, fleet: Fleet, session: aiohttp.ClientSession) -> None:
        self.index = index
        self.user = user
        self.fleet = fleet
        self.session = session
        self.secret = f"{7000 + index}-{secrets.token_hex(4)}"
        self.via_http = index % 3 == 0
        self.sockets: list[tuple[str, list[Frame]]] = []  # (process, frames) per socket, in order
        self.cursor: str | None = None
        self.acks: dict[str, set[str]] = defaultdict(set)  # client_message_id -> runs named
        self.runs: dict[str, str] = {}  # acknowledged run -> its client_message_id
        self.ended: dict[str, Frame] = {}
        self.errors: dict[str | None, list[Frame]] = defaultdict(list)
        self.sent = 0
        self.retries: Counter[str] = Counter()
        self.closes: list[tuple[str, int | None, str]] = []  # closed by the server: process, code, reason
        self.problems: list[str] = []
        self.late: list[str] = []
        self.ws: Any = None
        self.leaving = False
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._socket_task: asyncio.Task[None] | None = None

    # -- the socket ---------------------------------------------------------------------------

    async def wait_for(self, check: Callable[[], Any], timeout: float) -> Any:
        async with asyncio.timeout(timeout):
            while not (result := check()):
                self._wake.clear()
                await self._wake.wait()
        return result

    async def open(self) -> None:
        ws, name = await self._connect()
        self._socket_task = asyncio.create_task(self._stay_connected(ws, name))

    async def _connect(self) -> tuple[Any, str]:
        deadline = time.monotonic() + RECONNECT_DEADLINE_S
        attempt = 0
        while True:
            living = self.fleet.living(self.index + attempt)
            attempt += 1
            if living:
                process = living[0]
                try:
                    ws = await websockets.connect(process.server.ws_url, additional_headers=self.user.auth,
                                                  open_timeout=5, max_size=2**22, max_queue=None)
                    try:
                        ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    except BaseException:
                        await ws.close()
                        raise
                    if ready.get("type") == "ready":
                        return ws, process.name
                    self.problems.append(f"{process.name}: first frame {ready}")
                    await ws.close()
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd else None
                    if code == 1011:
                        self.problems.append(f"{process.name}: a new socket closed with 1011 ({exc.rcvd})")
                    self.retries[f"connect closed {code}"] += 1
                except InvalidStatus as exc:
                    status = exc.response.status_code
                    if status >= 500 and status != 503:
                        self.problems.append(f"{process.name}: the WebSocket handshake answered {status}")
                    self.retries[f"connect {status}"] += 1
                except (OSError, TimeoutError, InvalidHandshake) as exc:
                    self.retries[f"connect {type(exc).__name__}"] += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"user {self.index} could not reconnect within {RECONNECT_DEADLINE_S} s")
            await asyncio.sleep(0.2)

    async def _stay_connected(self, ws: Any, name: str) -> None:
        first = True
        while True:
            frames: list[Frame] = []
            self.sockets.append((name, frames))
            self.ws = ws
            self._connected.set()
            self._wake.set()
            try:
                await self._resume(ws, first)
                async for raw in ws:
                    self._take(json.loads(raw), frames, ws)
            except ConnectionClosed:
                pass
            finally:
                self._connected.clear()
                self.ws = None
                self._wake.set()
            if self.leaving:
                return
            code = ws.close_code
            self.closes.append((name, code, ws.close_reason or ""))
            if code == 1011:
                self.problems.append(f"{name}: socket closed with 1011 ({ws.close_reason})")
            first = False
            try:
                ws, name = await self._connect()
            except AssertionError as exc:
                self.problems.append(str(exc))
                return

    async def _resume(self, ws: Any, first: bool) -> None:
        """A new socket's first frame: a ping, or after a drop a resume from where the client stood."""
        if first:
            await ws.send(json.dumps({"type": "ping"}))
        elif self.cursor is not None:
            await ws.send(json.dumps({"type": "resume", "cursor": self.cursor}))
        else:
            await ws.send(json.dumps({"type": "ping"}))
            for run_id in [r for r in self.runs if r not in self.ended]:
                await ws.send(json.dumps({"type": "resume", "run_id": run_id, "after_seq": 0}))

    def _take(self, frame: Frame, frames: list[Frame], ws: Any) -> None:
        frames.append(frame)
        kind = frame.get("type")
        if "cursor" in frame:
            self.cursor = frame["cursor"]
        if kind == "ack":
            self.acks[frame["client_message_id"]].add(frame["run_id"])
            self.runs.setdefault(frame["run_id"], frame["client_message_id"])
        elif kind == "error":
            cmid = frame.get("client_message_id")
            self.errors[cmid].append(frame)
            if cmid is None:  # a resume refused in an outage: ask again shortly
                if frame.get("code") == "server_not_ready":
                    self.retries["resume server_not_ready"] += 1
                    asyncio.get_running_loop().call_later(0.5, self._resume_again, ws)
                else:
                    self.problems.append(f"unexpected error frame {frame}")
        elif kind in TERMINAL:
            self.ended[frame["run_id"]] = frame
        self._wake.set()

    def _resume_again(self, ws: Any) -> None:
        if self.ws is ws and not self.leaving:
            frame = {"type": "resume", "cursor": self.cursor} if self.cursor else {"type": "ping"}
            asyncio.get_running_loop().create_task(self._send_quietly(ws, frame))

    @staticmethod
    async def _send_quietly(ws: Any, frame: Frame) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(frame))

    async def leave(self) -> None:
        self.leaving = True
        if self.ws is not None:
            await self.ws.close()
        if self._socket_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._socket_task, 10)

    # -- the closed loop ----------------------------------------------------------------------

    async def chat_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sent += 1
            cmid = f"u{self.index}-m{self.sent}-{secrets.token_hex(3)}"
            text = says(self.index + self.sent, self.secret)
            run_id = await (self._post(cmid, text) if self.via_http else self._send(cmid, text))
            if run_id is None:
                continue
            try:
                await self.wait_for(lambda: run_id in self.ended, TERMINAL_PATIENCE_S)  # noqa: B023
            except TimeoutError:
                self.late.append(run_id)
            await asyncio.sleep(random.uniform(0.2, 0.6))

    async def _send(self, cmid: str, text: str) -> str | None:
        deadline = time.monotonic() + ACK_DEADLINE_S
        frame = json.dumps({"type": "chat", "message": text, "client_message_id": cmid})
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self._connected.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            ws, errors = self.ws, len(self.errors[cmid])
            try:
                await ws.send(frame)
                await self.wait_for(lambda: cmid in self.acks or len(self.errors[cmid]) > errors  # noqa: B023
                                    or self.ws is not ws, 10)  # noqa: B023
            except (ConnectionClosed, TimeoutError, AttributeError):
                self.retries["chat resent"] += 1
                await asyncio.sleep(0.2)
                continue
            if cmid in self.acks:
                return next(iter(self.acks[cmid]))
            if len(self.errors[cmid]) > errors:
                code = self.errors[cmid][-1]["code"]
                self.retries[f"chat {code}"] += 1
                if code not in ("server_not_ready", "rate_limited", "limit_exceeded"):
                    self.problems.append(f"chat {cmid} answered {self.errors[cmid][-1]}")
                    return None
                await asyncio.sleep(0.3)
        self.problems.append(f"chat {cmid} was never acknowledged within {ACK_DEADLINE_S} s")
        return None

    async def _post(self, cmid: str, text: str) -> str | None:
        deadline = time.monotonic() + ACK_DEADLINE_S
        attempt = 0
        while time.monotonic() < deadline:
            living = self.fleet.living(self.index + 1 + attempt)  # the other process first
            attempt += 1
            if not living:
                await asyncio.sleep(0.2)
                continue
            try:
                async with self.session.post(living[0].base_url + "/api/chat/message", headers=self.user.auth,
                                             json={"message": text, "client_message_id": cmid}) as response:
                    status, body = response.status, await response.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.retries[f"post {type(exc).__name__}"] += 1
                await asyncio.sleep(0.2)
                continue
            if status == 202:
                run_id = json.loads(body)["run_id"]
                self.acks[cmid].add(run_id)
                self.runs.setdefault(run_id, cmid)
                return run_id
            self.retries[f"post {status}"] += 1
            if status not in (503, 429):
                self.problems.append(f"POST {cmid} on {living[0].name} answered {status}: {body[:300]}")
                return None
            await asyncio.sleep(0.3)
        self.problems.append(f"POST {cmid} was never acknowledged within {ACK_DEADLINE_S} s")
        return None
