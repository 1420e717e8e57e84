"""`goldenpath chat`: a terminal client that logs in, opens /ws and streams runs as they happen."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import getpass
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from yarl import URL

TERMINAL = frozenset({"agent_completed", "agent_error", "agent_cancelled"})
CLOSE_UNAUTHORIZED = 4401
# 1001 shutting down, 1013 starting or full, 4408 we read too slowly: the protocol says reconnect and
# resume. 1006 is a connection that dropped without a close frame (network, a killed server): same cure.
RECONNECT_CODES = frozenset({1001, 1006, 1013, 4408})
RECONNECT_PAUSES_S = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
HTTP_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 10.0
# The client pings too, so a server that vanished without a word is noticed within this (and a half).
HEARTBEAT_S = 20.0
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
HELP = "/new starts a new thread, /quit exits (so do Ctrl-D and Ctrl-C); Ctrl-C during a run stops it"

Frame = dict[str, Any]


class Fatal(Exception):
    """The client cannot go on: a one-line reason for stderr and exit code 2."""


class _Retry(Exception):
    """Worth another try after a pause: the server is restarting, starting, full or unreachable."""


class Signal(enum.Enum):
    """What the inbox holds besides server frames and a Fatal."""

    INTERRUPT = "Ctrl-C"
    TYPED = "stdin has a line or ended"


# -- command line ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--user", required=True,
                        help="your username; the password is prompted (or GOLDENPATH_PASSWORD for scripts)")
    parser.add_argument("--thread", default=None, help="continue this thread instead of starting a new one")
    parser.add_argument("--json", action="store_true",
                        help="print every server frame as one JSON line on stdout, nothing else")
    parser.add_argument("--message", default=None,
                        help="send this one message, show its run and exit: 0 completed, 1 failed or stopped")


def run(args: argparse.Namespace) -> int:
    """`goldenpath chat`; exit code 0 fine, 1 the --message run failed or stopped, 2 cannot go on."""
    try:
        base_url = _base_url(args.url)
        password = _password(args.user)
        return asyncio.run(_main(args, base_url, password))
    except Fatal as exc:
        print(exc, file=sys.stderr, flush=True)
        return 2


def _base_url(url: str) -> str:
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise Fatal(f"--url must look like http://host:port, not {url!r}")
    return url.rstrip("/")


def _ws_url(base_url: str) -> str:
    return ("wss" + base_url.removeprefix("https") if base_url.startswith("https")
            else "ws" + base_url.removeprefix("http")) + "/ws"


def _password(user: str) -> str:
    # The variable is for scripts; a person types the password unseen (getpass turns echo off).
    password = os.environ.get("GOLDENPATH_PASSWORD")
    if password is not None:
        return password
    try:
        return getpass.getpass(f"Password for {user}: ")
    except EOFError:
        raise Fatal("login failed: no password given (type it, or set GOLDENPATH_PASSWORD)") from None


async def _main(args: argparse.Namespace, base_url: str, password: str) -> int:
    view: View = JsonView() if args.json else HumanView()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    # No total timeout: it would end a long conversation. Each step below has its own deadline.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        token = await _login(http, base_url, args.user, password)
        link = Link(http, base_url, token, inbox, view.note)
        await link.open()
        loop = asyncio.get_running_loop()
        # Ctrl-C becomes an inbox item: it stops a run (not the client), or leaves from the prompt.
        loop.add_signal_handler(signal.SIGINT, inbox.put_nowait, Signal.INTERRUPT)
        try:
            if args.message is not None:
                outcome, _ = await _exchange(link, view, inbox, args.message, args.thread)
                return 0 if outcome == "agent_completed" else 1
            view.note(f"connected to {base_url} as {args.user}; {HELP}")
            return await _converse(link, view, inbox, args.thread)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            view.end()
            await link.close()


# -- HTTP login -----------------------------------------------------------------------------------


async def _login(http: aiohttp.ClientSession, base_url: str, user: str, password: str) -> str:
    try:
        async with http.post(f"{base_url}/api/auth/login", json={"username": user, "password": password},
                             timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as response:
            status = response.status
            body = await _json_or_none(response)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise Fatal(_unreachable(base_url, exc)) from None
    if status == 200 and isinstance(body, dict) and isinstance(body.get("access_token"), str):
        return body["access_token"]
    raise Fatal(f"login failed: {_error_message(status, body)}")


async def _json_or_none(response: aiohttp.ClientResponse) -> Any:
    try:
        return json.loads(await response.text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _error_message(status: int, body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return f"the server answered HTTP {status} (is this a goldenpath server?)"


def _unreachable(base_url: str, exc: BaseException) -> str:
    cause = getattr(exc, "os_error", None) or exc
    if isinstance(cause, ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(cause, socket.gaierror):
        why = "unknown host"
    elif isinstance(exc, TimeoutError):
        why = f"no answer within {HTTP_TIMEOUT_S:g} s"
    else:
        why = (str(exc).splitlines() or [""])[0] or type(exc).__name__
    return f"cannot reach {base_url}: {why}"


# -- the socket -----------------------------------------------------------------------------------


class Link:
    """The WebSocket, kept open: after 1001/1013/4408 or a drop it reconnects and resumes from the
    last cursor, so a run's events are neither lost nor shown twice. Frames go to the inbox."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str,
                 inbox: asyncio.Queue[Any], note: Callable[[str], None]) -> None:
        self._http = http
        self._base_url = base_url
        self._token = token
        self._inbox = inbox
        self._note = note
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self.cursor: str | None = None
        self.run: Run | None = None  # the run going on: what a new socket must ask for again

    async def open(self) -> None:
        self._ws = await self._connect(reconnecting=False)
        self._reader = asyncio.create_task(self._read_forever(self._ws))

    async def send(self, frame: Frame) -> None:
        # A frame lost with a dropping socket is asked for again by the next one (_recovery_frames).
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
            if self._ws is not None:
                await self._ws.send_json(frame)

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
                if code == CLOSE_UNAUTHORIZED:
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
            raise _Retry(_unreachable(self._base_url, exc)) from None
        try:
            msg = await ws.receive(timeout=READY_TIMEOUT_S)
        except TimeoutError:
            await ws.close()
            raise _Retry("the server did not say ready") from None
        if msg.type is aiohttp.WSMsgType.TEXT and (self._deliver(msg.data) or {}).get("type") == "ready":
            return ws
        code = ws.close_code
        await ws.close()
        if code == CLOSE_UNAUTHORIZED:
            raise Fatal("session expired: log in again")
        if code in RECONNECT_CODES:
            raise _Retry(f"the server is not ready (close code {code})")
        raise Fatal(f"the server refused the WebSocket (code {code})")


# -- one run --------------------------------------------------------------------------------------


@dataclass
class Run:
    """One message sent and what came back for it: matched by client_message_id, then by run_id."""

    message: str
    thread_id: str | None
    client_message_id: str = field(default_factory=lambda: f"cli-{uuid.uuid4().hex}")
    run_id: str | None = None
    last_seq: int = 0
    outcome: str | None = None
    cancel_requested: bool = False
    _early: list[Frame] = field(default_factory=list)

    def chat_frame(self) -> Frame:
        frame: Frame = {"type": "chat", "message": self.message, "client_message_id": self.client_message_id}
        if self.thread_id:
            frame["thread_id"] = self.thread_id
        return frame

    def cancel_frame(self) -> Frame:
        # By client_message_id: it stops the right run even if Ctrl-C came before the ack.
        return {"type": "cancel", "client_message_id": self.client_message_id}

    def resume_frame(self) -> Frame:
        return {"type": "resume", "run_id": self.run_id, "after_seq": self.last_seq}

    def recovery_frames(self, *, resumed_by_cursor: bool) -> list[Frame]:
        if self.run_id is None:
            # The ack may be lost: the same client_message_id starts no second run, it is acked again.
            frames = [self.chat_frame()]
        else:
            frames = [] if resumed_by_cursor else [self.resume_frame()]
        return frames + ([self.cancel_frame()] if self.cancel_requested else [])

    def accept(self, frame: Frame) -> list[Frame]:
        """This run's frames among what arrived: none for another run's or a repeat; sets `outcome`."""
        kind = frame.get("type")
        if frame.get("client_message_id") == self.client_message_id and kind == "ack":
            self.run_id = frame.get("run_id")
            self.thread_id = frame.get("thread_id") or self.thread_id
            early, self._early = self._early, []
            return [frame, *(mine for event in early for mine in self._event(event))]
        if frame.get("client_message_id") == self.client_message_id and kind == "error":
            if self.run_id is None:  # the chat frame was refused: no run, no ack will come
                self.outcome = "error"
            return [frame]
        if isinstance(frame.get("seq"), int) and "run_id" in frame:
            if self.run_id is None:  # replayed on a new socket before the ack that names the run
                self._early.append(frame)
                return []
            return self._event(frame)
        return []

    def _event(self, frame: Frame) -> list[Frame]:
        if frame.get("run_id") != self.run_id or frame["seq"] <= self.last_seq:
            return []
        self.last_seq = frame["seq"]
        if frame.get("type") in TERMINAL:
            self.outcome = frame["type"]
        return [frame]


async def _exchange(link: Link, view: View, inbox: asyncio.Queue[Any], text: str,
                    thread_id: str | None) -> tuple[str, str | None]:
    """Send one message and show its run to the end: (how it ended, the thread it went to)."""
    run = Run(text, thread_id)
    link.run = run
    try:
        view.begin()
        await link.send(run.chat_frame())
        while run.outcome is None:
            item = await inbox.get()
            if item is Signal.INTERRUPT:
                if run.cancel_requested:  # a second Ctrl-C: stop waiting for the server to confirm
                    view.note("(stopped waiting; the run may still end on the server)")
                    return "interrupted", run.thread_id
                run.cancel_requested = True
                await link.send(run.cancel_frame())
            elif isinstance(item, Fatal):
                raise item
            elif isinstance(item, dict):
                view.raw(item)
                if item.get("type") == "resync" and run.run_id is not None:
                    # The cursor was older than what the server keeps: ask for this run's events instead.
                    await link.send(run.resume_frame())
                for frame in run.accept(item):
                    view.show(frame)
        return run.outcome, run.thread_id
    finally:
        link.run = None
        view.end()


# -- interactive mode -----------------------------------------------------------------------------


async def _converse(link: Link, view: View, inbox: asyncio.Queue[Any], thread_id: str | None) -> int:
    keyboard = Keyboard(inbox)
    try:
        while (line := await _prompt(keyboard, view, inbox)) is not None:
            text = line.strip()
            if text == "/quit":
                break
            if text == "/new":
                thread_id = None
                view.note("(your next message starts a new thread)")
            elif text in ("/help", "/?"):
                view.note(HELP)
            elif text:
                _, thread_id = await _exchange(link, view, inbox, text, thread_id)
    finally:
        keyboard.pause()
    return 0


async def _prompt(keyboard: Keyboard, view: View, inbox: asyncio.Queue[Any]) -> str | None:
    """The next line typed; None for Ctrl-D or Ctrl-C. Frames arriving meanwhile are only shown raw."""
    view.prompt("you> ")
    keyboard.listen()
    try:
        while (line := keyboard.next_line()) is None and not keyboard.ended:
            item = await inbox.get()
            if item is Signal.INTERRUPT:
                break
            if isinstance(item, Fatal):
                raise item
            if isinstance(item, dict):
                view.raw(item)
    finally:
        keyboard.pause()
        view.prompt_done(ended=line is None)
    return line


class Keyboard:
    """stdin, line by line, inside the event loop (no thread left stuck in a read on exit). It is read
    only while the prompt is up, so what is typed during a run waits in the terminal for the next one."""

    def __init__(self, inbox: asyncio.Queue[Any]) -> None:
        self._fd = sys.stdin.fileno()
        self._inbox = inbox
        self._lines: deque[str] = deque()
        self._partial = b""
        self._watching = False
        self.ended = False

    def next_line(self) -> str | None:
        return self._lines.popleft() if self._lines else None

    def listen(self) -> None:
        if self.ended or self._lines or self._watching:
            return
        try:
            asyncio.get_running_loop().add_reader(self._fd, self._read)
            self._watching = True
        except PermissionError:
            # A regular file (stdin redirected from one) cannot be watched, but it never blocks either.
            while not self._lines and not self.ended:
                self._read()

    def pause(self) -> None:
        if self._watching:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._watching = False

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # the terminal went away
            data = b""
        if data:
            *complete, self._partial = (self._partial + data).split(b"\n")
            self._lines.extend(line.decode(errors="replace").rstrip("\r") for line in complete)
        else:
            self.ended = True
            self.pause()
            if self._partial:
                self._lines.append(self._partial.decode(errors="replace"))
                self._partial = b""
        self._inbox.put_nowait(Signal.TYPED)


# -- showing it -----------------------------------------------------------------------------------


class View(Protocol):
    def raw(self, frame: Frame) -> None: ...
    def show(self, frame: Frame) -> None: ...
    def begin(self) -> None: ...
    def end(self) -> None: ...
    def prompt(self, text: str) -> None: ...
    def prompt_done(self, *, ended: bool) -> None: ...
    def note(self, text: str) -> None: ...


class JsonView:
    """--json: every server frame as one line on stdout, for programs; text for people goes to stderr."""

    def raw(self, frame: Frame) -> None:
        sys.stdout.write(json.dumps(frame, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def show(self, frame: Frame) -> None:
        pass

    def begin(self) -> None:
        pass

    def end(self) -> None:
        pass

    def prompt(self, text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    def prompt_done(self, *, ended: bool) -> None:
        if ended:
            self.prompt("\n")

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _shown_result(result: Any, limit: int = 200) -> str:
    # The calculator answers {"expression", "value"}: the expression was just shown, the value is news.
    if isinstance(result, dict) and "value" in result:
        result = result["value"]
    text = _compact(result)
    return text if len(text) <= limit else text[:limit - 1] + "…"


class HumanView:
    """The run as a person reads it. On a terminal a spinner stands in while the agent works;
    elsewhere (a pipe, a file) every step is a plain line."""

    def __init__(self) -> None:
        self._out = sys.stdout
        self._tty = self._out.isatty()
        self._spinner: asyncio.Task[None] | None = None
        self._label = ""
        self._midline = False  # the answer is being written on the current line
        self._prompt: str | None = None  # shown and waiting for a line
        self._streamed = False
        self._handlers = {
            "ack": self._on_ack, "agent_thinking": self._on_thinking,
            "tool_executing": self._on_tool_executing, "tool_completed": self._on_tool_completed,
            "agent_message_delta": self._on_delta, "agent_completed": self._on_completed,
            "agent_error": self._on_agent_error, "agent_cancelled": self._on_cancelled,
            "error": self._on_error,
        }

    def raw(self, frame: Frame) -> None:
        pass

    def show(self, frame: Frame) -> None:
        handler = self._handlers.get(frame.get("type", ""))
        if handler is not None:
            data = frame.get("data")
            handler(frame, data if isinstance(data, dict) else {})

    def begin(self) -> None:
        self._streamed = False
        self._wait("thinking…")

    def end(self) -> None:
        self._stop_spinner()
        if self._midline:
            self._write("\n")
            self._midline = False

    def prompt(self, text: str) -> None:
        self._prompt = text
        self._write(text)

    def prompt_done(self, *, ended: bool) -> None:
        self._prompt = None
        if ended:
            self._write("\n")  # leave the shell's prompt on a line of its own

    def note(self, text: str) -> None:
        self.end()
        if self._prompt is not None:  # e.g. "reconnecting…" while idle: below the prompt, then it again
            self._write("\n")
        print(text, file=sys.stderr, flush=True)
        if self._prompt is not None:
            self._write(self._prompt)

    # -- the events ---------------------------------------------------------------------------

    def _on_ack(self, frame: Frame, data: Frame) -> None:
        if frame.get("status") == "queued":
            self._wait("queued behind this thread's current run…")

    def _on_thinking(self, frame: Frame, data: Frame) -> None:
        text = str(data.get("text") or "")
        if self._tty:
            self._wait(f"thinking… {text}")
        else:
            self._line(f"thinking… {text}")

    def _on_tool_executing(self, frame: Frame, data: Frame) -> None:
        self._line(f"→ tool {data.get('tool')} {_compact(data.get('arguments'))}")
        self._wait(f"running {data.get('tool')}…")

    def _on_tool_completed(self, frame: Frame, data: Frame) -> None:
        if "error" in data:
            self._line(f"✗ {data['error']}")
        else:
            self._line(f"← {_shown_result(data.get('result'))} ({data.get('duration_ms', '?')} ms)")
        self._wait("thinking…")

    def _on_delta(self, frame: Frame, data: Frame) -> None:
        self._stream(str(data.get("delta") or ""))

    def _on_completed(self, frame: Frame, data: Frame) -> None:
        if not self._streamed:  # no delta came (a model that does not stream): the whole answer
            self._stream(str(data.get("text") or ""))
        self.end()

    def _on_agent_error(self, frame: Frame, data: Frame) -> None:
        self._line(f"error: {data.get('message') or data.get('code') or 'the run failed'}")

    def _on_cancelled(self, frame: Frame, data: Frame) -> None:
        self._line("(stopped)")

    def _on_error(self, frame: Frame, data: Frame) -> None:
        self._line(f"error: {frame.get('message') or frame.get('code')}")

    # -- writing ------------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    def _line(self, text: str) -> None:
        self.end()
        self._write(text + "\n")

    def _stream(self, text: str) -> None:
        self._stop_spinner()
        self._write(text)
        self._streamed = True
        if text:
            self._midline = not text.endswith("\n")

    def _wait(self, label: str) -> None:
        self._label = label
        if self._tty and self._spinner is None:
            self.end()
            self._spinner = asyncio.get_running_loop().create_task(self._spin())

    def _stop_spinner(self) -> None:
        if self._spinner is not None:
            self._spinner.cancel()
            self._spinner = None
            self._write("\r\x1b[K")

    async def _spin(self) -> None:
        for glyph in itertools.cycle(SPINNER):
            # Cut to the width: a wrapped line could not be rubbed out with \r.
            width = max(shutil.get_terminal_size().columns - 3, 10)
            self._write(f"\r{glyph} {self._label[:width]}\x1b[K")
            await asyncio.sleep(0.1)
