"""SocketConnection: one client WebSocket, written by one task from a bounded queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from loguru import logger

from adapters.budget import UserBudget
from adapters.close_codes import CloseCode
from adapters.event_bus import Envelope
from adapters.follow import LiveQueue, Position, ReadStored, follow
from adapters.frame_queue import FrameQueue, Signal

# A paused socket looks this often whether its connection is gone.
PAUSE_SLICE_S = 0.25
# Linux TCP states (tcp_states.h): the peer sent its FIN, or the connection is gone.
_TCP_HUNG_UP = frozenset({7, 8})  # TCP_CLOSE, TCP_CLOSE_WAIT


def peer_hung_up(transport: asyncio.BaseTransport) -> bool:
    """The client closed its end, told by the kernel, not by a read.

    A socket paused for its budget is not read, so asyncio never sees its EOF: a flooder that
    hung up in debt looked connected for as long as the debt lasted. Linux only; elsewhere False.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return False
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] in _TCP_HUNG_UP
    except OSError:
        return True  # a socket the kernel no longer has

class SocketConnection:
    """Frames wait in a queue bounded in frames and bytes; a client too slow to drain it is closed with 4408.

    Too slow is also a writer that has not got a frame out for `stall_s` (aiohttp's send waits
    while the client's TCP window is full): the close frame gets as long again to go out, then
    the connection is cut, so an unread socket holds neither the server's buffers nor its queue.

    It remembers the last seq it sent of each run and drops anything at or below it, so no
    event reaches it twice whatever path it comes by (live, a resume, a catch-up after the bus
    was lost). During a replay, live events are held back and `follow` sends them after it.
    """

    def __init__(self, ws: web.WebSocketResponse, *, user_id: str, connection_id: str,
                 max_queue: int, max_queue_bytes: int, stall_s: float, budget: UserBudget,
                 transport: asyncio.BaseTransport | None,
                 fill_gap: Callable[[str], ReadStored] | None = None) -> None:
        self.ws = ws
        self.user_id = user_id
        self.connection_id = connection_id
        self.budget = budget
        self._transport = transport
        self._queue: FrameQueue[str | None] = FrameQueue(max_queue)
        self._max_bytes = max_queue_bytes
        self._queued_bytes = 0
        self._taken = Signal()  # the writer took a frame: a waiting replay may find room
        self._stall_s = stall_s
        self._writer: asyncio.Task[None] | None = None
        self._sending_since: float | None = None  # loop time the send under way began
        self._closing = False
        self._held: LiveQueue | None = None
        self._first_frame_pending = False
        self._replaying = asyncio.Lock()
        # A run's stored events after a position: fills a gap in its live events (see deliver).
        self._fill_gap = fill_gap
        self._filling: set[asyncio.Task[None]] = set()
        self._sent = Position()
        self._before_first_frame: Position | None = None
        self.sent = 0
        self.dropped = 0

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def gone(self) -> bool:
        """Closing, or the client's connection is: what it sent and what it would get go nowhere.

        aiohttp hands out the frames a connection had buffered after it closed; a flooder that
        hangs up would otherwise have each of them answered (a resume: a replay) for nobody.
        """
        transport = self._transport
        if self._closing or transport is None:
            return self._closing
        return transport.is_closing() or peer_hung_up(transport)

    async def pause(self, seconds: float) -> bool:
        """Wait `seconds` (a budget's debt), but no longer than the connection lives; whether it
        still does (False: what it sent and would get go nowhere, stop reading it).

        A flooder that hangs up in debt would otherwise keep its handler, its buffered frames and
        its socket's objects for the whole debt: 20 garbage senders left ~11 MiB behind them.
        Always yields: frames already buffered never hold the loop in one go.
        """
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        await asyncio.sleep(0)
        # Polled: a hang-up of a socket not being read is known only by asking the kernel.
        while not (gone := self.gone) and (left := until - loop.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(left, PAUSE_SLICE_S))
        return not gone

    @property
    def high_cursor(self) -> str | None:
        return self._sent.cursor

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name=f"ws-writer:{self.connection_id}")
        asyncio.get_running_loop().call_later(self._stall_s / 4, self._watch_writer)

    def _watch_writer(self) -> None:
        """A send that has not returned for `stall_s` (the client's TCP window stayed shut) closes
        the socket. A watchdog a few times per `stall_s` until the socket closes, not a timer per
        frame: arming one per send cost ~10% of a replay's time (py-spy, docs/performance.md
        "Fair under abuse")."""
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        since = self._sending_since
        if since is not None and loop.time() - since >= self._stall_s:
            self._too_slow(f"took no frame for {self._stall_s:g} s")
            return
        loop.call_later(self._stall_s / 4, self._watch_writer)

    # -- frames -------------------------------------------------------------------------------

    def send(self, frame: str) -> bool:
        """Queue a frame without waiting; False when the socket is closing or over its limit."""
        if self._closing:
            self.dropped += 1
            return False
        if self._queued_bytes + len(frame) > self._max_bytes or self._queue.full():
            self._too_slow(f"fell {self._queue.qsize()} frames ({self._queued_bytes} bytes) behind")
            return False
        self._put(frame)
        return True

    def _put(self, frame: str) -> None:
        self._queued_bytes += len(frame)
        self._queue.put(frame)

    def send_json(self, payload: dict[str, Any]) -> bool:
        return self.send(json.dumps(payload, separators=(",", ":")))

    def deliver(self, envelope: Envelope) -> bool:
        """A live event from the bridge."""
        if self._closing:
            self.dropped += 1
            return False
        if self._held is not None:
            if not self._held.put(envelope):
                self._too_slow(f"held {self._held.limit} live events during a replay")
                return False
            return True
        if not self._sent.is_new(envelope):
            return True
        last = self._sent.seq(envelope.run_id)
        if last and envelope.seq > last + 1 and self._fill_gap is not None:
            # The events between were stored but never published (their publisher died in between,
            # or the bus dropped them): read them from the log first, holding this one meanwhile.
            self._hold().put(envelope)
            task = asyncio.get_running_loop().create_task(
                self.resume(self._fill_gap(envelope.run_id), self._sent.copy(), skip=self._sent))
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)
            return True
        if not self.send(envelope.frame):
            return False
        self._sent.note(envelope)
        return True

    # -- resume -------------------------------------------------------------------------------

    def _hold(self) -> LiveQueue:
        if self._held is None:
            self._held = LiveQueue(self._queue.maxsize)
        return self._held

    def hold_until_first_frame(self, patience_s: float) -> None:
        """A new socket's first frame is often a resume: live events wait so the replay comes first.

        A client that only listens gets them after `patience_s` at the latest.
        """
        self._hold()
        self._first_frame_pending = True
        asyncio.get_running_loop().call_later(patience_s, self.first_frame_handled)

    def client_frame(self) -> None:
        """A frame of the client arrived: the first one marks what was sent before it."""
        if self._before_first_frame is None:
            self._before_first_frame = self._sent.copy()

    @property
    def sent_before_first_frame(self) -> Position:
        """What went out live before the client's first frame (its patience ran out first).

        A resume by cursor, usually that first frame, leaves these out: the client has them."""
        return self._before_first_frame or Position()

    def first_frame_handled(self) -> None:
        if self._first_frame_pending:
            self._first_frame_pending = False
            self._release()

    async def resume(self, read: ReadStored, since: Position, *, skip: Position | None = None) -> None:
        """Send the stored events after `since`, then the live ones held meanwhile (`follow` merges them).

        It waits for room in the queue instead of dropping; one replay at a time keeps them in order,
        and one at a time per user keeps a user's sockets from replaying side by side.
        What it replays is charged to the user's budget. `skip`: leave out what that position has
        (what this socket sent, for a catch-up or a gap filled; what it sent before the client's
        first frame, for a resume by cursor). Otherwise a client gets what it asks for.
        """

        async def charged(position: Position) -> Sequence[Envelope]:
            # Each read is charged as it is made (what a page costs is reading and encoding it,
            # sent or not): a user in debt waits before the next page, not the others.
            if not await self.pause(self.budget.wait_s()):
                return ()
            page = await read(position)
            self.budget.replayed(len(page))
            return page

        try:
            async with self.budget.replay_turn, self._replaying:
                events = follow(self._hold(), charged, since, caught_up_only=True)
                async with contextlib.aclosing(events):
                    async for envelope in events:
                        wanted = envelope is not None and (skip is None or skip.is_new(envelope))
                        if wanted and not await self._put_waiting(envelope):
                            return
        finally:
            self._release()

    async def catch_up(self, read: ReadStored) -> None:
        """After the bus was away: only the stored events this socket has not sent."""
        await self.resume(read, self._sent.copy(), skip=self._sent)

    async def _put_waiting(self, envelope: Envelope) -> bool:
        # No room means the writer is behind; a writer that stalls closes the socket, ending this wait.
        frame = envelope.frame
        while not self._closing and (self._queue.full() or
                                     self._queued_bytes + len(frame) > self._max_bytes):
            await self._taken.wait()
        if self._closing:
            return False
        self._put(frame)
        self._sent.note(envelope)
        return True

    def _release(self) -> None:
        # The client's first frame, or a replay, is still under way: it releases them when done.
        if self._first_frame_pending or self._replaying.locked():
            return
        held, self._held = self._held, None
        for envelope in held.drain() if held is not None else ():
            self.deliver(envelope)

    # -- closing ------------------------------------------------------------------------------

    def _too_slow(self, why: str) -> None:
        self.dropped += 1
        if not self._closing:
            logger.warning("socket {} {}; closing it with 4408", self.connection_id, why)
            self._begin_close(CloseCode.TOO_SLOW, "too slow: reconnect and resume")

    def close_soon(self, code: int, message: str) -> None:
        """Close from outside the socket's own task (a timer, another request)."""
        self._begin_close(code, message)

    def _begin_close(self, code: int, message: str) -> None:
        self._closing = True
        self._taken.notify()
        asyncio.get_running_loop().create_task(self._close_now(code, message))

    async def _close_now(self, code: int, message: str) -> None:
        if self._writer is not None:
            self._writer.cancel()
        self._forget_queued()
        await self._close_ws(code, message)

    async def _close_ws(self, code: int, message: str) -> None:
        """The close frame and the client's answer, `stall_s` at most; then the connection is cut."""
        try:
            async with asyncio.timeout(self._stall_s):
                await self.ws.close(code=code, message=message.encode())
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()
        except Exception:  # noqa: S110 - the client went away while being closed: nothing to tell it
            pass

    def _forget_queued(self) -> None:
        self._queue.clear()
        self._queued_bytes = 0

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frame = await self._queue.get()
            if frame is None:
                return
            self._queued_bytes -= len(frame)
            self._taken.notify()
            self._sending_since = loop.time()  # a send that outlasts stall_s is cut (_watch_writer)
            try:
                await self.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                self._closing = True
                self._taken.notify()
                return
            finally:
                self._sending_since = None
            self.sent += 1

    async def close(self, code: int = 1000, message: str = "") -> None:
        """Send what is queued (briefly), then close with the given code."""
        if self._writer is not None and not self._closing:
            self._closing = True
            self._queue.put(None)  # past maxsize too: the writer ends after what is queued
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._writer), 2)
        self._closing = True
        self._taken.notify()
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
        self._forget_queued()
        await self._close_ws(code, message)
