"""The WebSocket to the server, kept open across restarts and drops.

Its own module because reconnecting is the subtle part of the client: which close codes mean "try
again", how long to wait, and what to send on a new socket so a run is neither lost nor shown twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from adapters.close_codes import CloseCode
from entrypoints.chat_client.inbox import Fatal, Frame, Inbox
from entrypoints.chat_client.login import HTTP_TIMEOUT_S, unreachable

if TYPE_CHECKING:
    from entrypoints.chat_client.exchange import Run

# Shutting down, starting or full, we read too slowly: the protocol says reconnect and resume. 1006 is
# a connection that dropped without a close frame (network, a killed server): the same cure.
RECONNECT_CODES = frozenset({CloseCode.GOING_AWAY, CloseCode.TRY_AGAIN, CloseCode.TOO_SLOW,
                             aiohttp.WSCloseCode.ABNORMAL_CLOSURE})
RECONNECT_PAUSES_S = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
READY_TIMEOUT_S = 10.0
# The client pings too, so a server that vanished without a word is noticed within this (and a half).
HEARTBEAT_S = 20.0


class _Retry(Exception):
    """Worth another try after a pause: the server is restarting, starting, full or unreachable."""


def _ws_url(base_url: str) -> str:
    return ("wss" + base_url.removeprefix("https") if base_url.startswith("https")
            else "ws" + base_url.removeprefix("http")) + "/ws"


class Link:
    """The WebSocket, kept open: after 1001/1013/4408 or a drop it reconnects and resumes from the
    last cursor, so a run's events are neither lost nor shown twice. Frames go to the inbox."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str,
                 inbox: Inbox, note: Callable[[str], None]) -> None:
        self._http = http
        self._base_url = base_url
        self._token = token
        self._inbox = inbox
        self._note = note
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self.cursor: str | None = None
        self.run: Run | None = None  # the run going on: what a new socket must ask for again
        self.connections = 0  # sockets opened so far: one more means a reconnect, so look at what waits

    async def open(self) -> None:
        self._ws = await self._connect(reconnecting=False)
        self._reader = asyncio.create_task(self._read_forever(self._ws))

    async def send(self, frame: Frame) -> None:
        # A frame lost with a dropping socket is asked for again by the next one (_recovery_frames).
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
            if self._ws is not None:
                await self._ws.send_json(frame)

    async def pending_approvals(self) -> list[Frame] | None:
        """GET /api/approvals/pending: the questions the user's waiting runs ask; None (said) if it failed."""
        failed = "could not look for questions waiting for you"
        answer = await self.request("GET", "/api/approvals/pending", failed=failed)
        if answer is None:
            return None
        status, body = answer
        approvals = body.get("approvals") if status == 200 and isinstance(body, dict) else None
        if not isinstance(approvals, list):
            self._note(f"{failed}: the server answered HTTP {status}")
            return None
        return [approval for approval in approvals if isinstance(approval, dict)]

    async def request(self, method: str, path: str, *, failed: str, params: dict[str, str] | None = None,
                      json_body: Frame | None = None) -> tuple[int, Any] | None:
        """One HTTP call with the session's token: (status, the JSON body or None); None, said with
        `failed` first, if the server could not be reached."""
        try:
            async with self._http.request(method, f"{self._base_url}{path}", params=params, json=json_body,
                                          headers={"Authorization": f"Bearer {self._token}"},
                                          timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as response:
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._note(f"{failed}: {unreachable(self._base_url, exc)}")
            return None
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        return status, body

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()

    async def _read_forever(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        # Always reading, also while idle at the prompt: that is what answers the server's pings.
        try:
            while True:
                async for msg in ws:
                    if msg.type is aiohttp.WSMsgType.TEXT:
                        self._deliver(msg.data)
                code = ws.close_code
                if code == CloseCode.UNAUTHORIZED:
                    raise Fatal("session expired: log in again")
                if code is not None and code not in RECONNECT_CODES:
                    raise Fatal(f"the server closed the connection (code {code})")
                ws = self._ws = await self._connect(reconnecting=True)
                for frame in self._recovery_frames():
                    await self.send(frame)
        except Fatal as exc:
            self._inbox.put_nowait(exc)
        except Exception as exc:  # anything else must end the client visibly, not hang it
            self._inbox.put_nowait(Fatal(f"connection failed: {exc!r}"))

    def _deliver(self, data: str) -> Frame | None:
        try:
            frame = json.loads(data)
        except json.JSONDecodeError:
            return None
        if not isinstance(frame, dict):
            return None
        if isinstance(frame.get("cursor"), str):
            self.cursor = frame["cursor"]
        self._inbox.put_nowait(frame)
        return frame

    def _recovery_frames(self) -> list[Frame]:
        frames: list[Frame] = [{"type": "resume", "cursor": self.cursor}] if self.cursor else []
        if self.run is not None:
            frames += self.run.recovery_frames(resumed_by_cursor=self.cursor is not None)
        return frames

    async def _connect(self, *, reconnecting: bool) -> aiohttp.ClientWebSocketResponse:
        failure = _Retry("no attempt made")
        for attempt, pause in enumerate(RECONNECT_PAUSES_S, start=1):
            await asyncio.sleep(pause)
            if reconnecting:
                self._note("reconnecting…" if attempt == 1 else
                           f"reconnecting… (attempt {attempt} of {len(RECONNECT_PAUSES_S)})")
            try:
                return await self._handshake()
            except _Retry as exc:
                failure = exc
                if not reconnecting:
                    self._note(f"{exc}; trying again…")
        raise Fatal(f"could not {'reconnect' if reconnecting else 'connect'}: {failure}")

    async def _handshake(self) -> aiohttp.ClientWebSocketResponse:
        """One attempt: the socket once the server said `ready` (that frame goes to the inbox too)."""
        # The token goes in a header, never in the URL, where proxies and logs would keep it.
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            async with asyncio.timeout(HTTP_TIMEOUT_S):
                ws = await self._http.ws_connect(_ws_url(self._base_url), headers=headers,
                                                 heartbeat=HEARTBEAT_S,
                                                 timeout=aiohttp.ClientWSTimeout(ws_close=5.0))
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (502, 503, 504):
                raise _Retry(f"the server answered HTTP {exc.status}") from None
            raise Fatal(f"cannot open the WebSocket: HTTP {exc.status}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _Retry(unreachable(self._base_url, exc)) from None
        try:
            msg = await ws.receive(timeout=READY_TIMEOUT_S)
        except TimeoutError:
            await ws.close()
            raise _Retry("the server did not say ready") from None
        if msg.type is aiohttp.WSMsgType.TEXT and (self._deliver(msg.data) or {}).get("type") == "ready":
            self.connections += 1  # before anyone reads that `ready` from the inbox
            return ws
        code = ws.close_code
        await ws.close()
        if code == CloseCode.UNAUTHORIZED:
            raise Fatal("session expired: log in again")
        if code in RECONNECT_CODES:
            raise _Retry(f"the server is not ready (close code {code})")
        raise Fatal(f"the server refused the WebSocket (code {code})")
