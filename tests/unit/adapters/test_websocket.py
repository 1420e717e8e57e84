"""SocketConnection with a fake aiohttp socket: a bounded queue, per-run seq dedupe, replay then held live."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from adapters.event_bus import Envelope
from adapters.follow import Position
from adapters.websocket import SocketConnection
from container.settings import SecuritySettings, ServerSettings
from entrypoints.ws_limits import user_budget
from tests.helpers import eventually
from tests.unit.adapters.test_follow import envelope


class FakeWebSocket:
    """The two aiohttp WebSocketResponse methods that SocketConnection calls; paused, it reads nothing."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.closed_with: tuple[int, bytes] | None = None
        self._reading = asyncio.Event()
        self._reading.set()

    def pause(self) -> None:
        self._reading.clear()

    async def send_str(self, data: str) -> None:
        await self._reading.wait()
        self.sent.append(json.loads(data))

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed_with = (code, message)
        return True

    def seqs(self) -> list[tuple[str, int]]:
        return [(frame["run_id"], frame["seq"]) for frame in self.sent]


def limits(**changes: Any) -> dict[str, Any]:
    """SocketConnection's limits from the settings' defaults, with a test's changes."""
    server = ServerSettings()
    return {"max_queue": server.ws_send_queue, "max_queue_bytes": server.ws_send_queue_bytes,
            "stall_s": server.ws_send_stall_s, "budget": user_budget(SecuritySettings()),
            "transport": None, **changes}


def connect(max_queue: int = 16, **changes: Any) -> tuple[SocketConnection, FakeWebSocket]:
    ws = FakeWebSocket()
    connection = SocketConnection(ws, user_id="usr_a", connection_id="conn_test",  # type: ignore[arg-type]
                                  **limits(max_queue=max_queue, **changes))
    connection.start()
    return connection, ws


async def test_a_client_too_slow_to_drain_its_queue_is_closed_with_4408() -> None:
    connection, ws = connect(max_queue=16)
    ws.pause()
    delivered = [connection.deliver(envelope("run_a", seq, seq)) for seq in range(1, 20)]
    assert delivered[:16] == [True] * 16 and delivered[-1] is False
    await eventually(lambda: ws.closed_with, what="the 4408 close")
    assert ws.closed_with is not None and ws.closed_with[0] == 4408
    assert connection.closing


async def test_an_event_at_or_below_the_last_sent_seq_of_its_run_is_dropped() -> None:
    connection, ws = connect()
    for run_id, seq in [("run_a", 1), ("run_a", 2), ("run_a", 2), ("run_a", 1), ("run_b", 1), ("run_a", 3)]:
        assert connection.deliver(envelope(run_id, seq, seq))
    await eventually(lambda: len(ws.sent) == 4, what=lambda: f"four frames, not {ws.seqs()}")
    assert ws.seqs() == [("run_a", 1), ("run_a", 2), ("run_b", 1), ("run_a", 3)]
    await connection.close()


async def test_a_resume_sends_the_replay_then_the_live_events_held_meanwhile_once() -> None:
    connection, ws = connect()
    connection.hold_until_first_frame(patience_s=60)
    connection.deliver(envelope("run_b", 1, 1))  # live before the resume frame: held
    stored = [envelope("run_a", seq, seq + 1) for seq in (1, 2, 3)]

    async def read(_: Position) -> list[Envelope]:
        connection.deliver(envelope("run_a", 3, 4))  # stored and live both: sent once
        connection.deliver(envelope("run_a", 4, 5))  # live only
        return stored

    await connection.resume(read, Position({"run_a": 0}))
    connection.first_frame_handled()
    connection.deliver(envelope("run_a", 5, 6))
    await eventually(lambda: len(ws.sent) == 6, what=lambda: f"six frames, not {ws.seqs()}")
    assert ws.seqs() == [("run_a", 1), ("run_a", 2), ("run_a", 3), ("run_b", 1), ("run_a", 4), ("run_a", 5)]
    assert connection.high_cursor == f"{6:020d}"
    await connection.close()


async def test_a_client_resume_gets_what_it_asked_for_a_catch_up_only_what_is_missing() -> None:
    connection, ws = connect()
    for seq in (1, 2):
        connection.deliver(envelope("run_a", seq, seq))
    stored = [envelope("run_a", seq, seq) for seq in (1, 2, 3)]

    async def read(_: Position) -> list[Envelope]:
        return stored

    await connection.catch_up(read)
    await eventually(lambda: len(ws.sent) == 3, what=lambda: f"three frames, not {ws.seqs()}")
    await connection.resume(read, Position({"run_a": 1}))
    await eventually(lambda: len(ws.sent) == 5, what=lambda: f"five frames, not {ws.seqs()}")
    assert ws.seqs() == [("run_a", 1), ("run_a", 2), ("run_a", 3), ("run_a", 2), ("run_a", 3)]
    await connection.close()


async def test_live_events_held_past_the_queue_size_during_a_resume_close_with_4408() -> None:
    connection, ws = connect(max_queue=16)

    async def read(_: Position) -> list[Envelope]:
        for seq in range(1, 18):
            connection.deliver(envelope("run_a", seq, seq))
        return []

    await connection.resume(read, Position())
    await eventually(lambda: ws.closed_with, what="the 4408 close")
    assert ws.closed_with is not None and ws.closed_with[0] == 4408


async def test_a_failed_read_releases_the_held_live_events() -> None:
    connection, ws = connect()

    async def read(_: Position) -> list[Envelope]:
        connection.deliver(envelope("run_a", 1, 1))
        raise ConnectionError("the database went away")

    with pytest.raises(ConnectionError):
        await connection.resume(read, Position())
    connection.deliver(envelope("run_a", 2, 2))
    await eventually(lambda: len(ws.sent) == 2, what=lambda: f"two frames, not {ws.seqs()}")
    assert ws.seqs() == [("run_a", 1), ("run_a", 2)]
    await connection.close()


async def test_a_client_that_takes_no_frame_for_the_stall_time_is_closed_with_4408() -> None:
    connection, ws = connect(stall_s=0.05)
    ws.pause()
    assert connection.send('{"type":"pong"}')
    await eventually(lambda: ws.closed_with, what="the 4408 close")
    assert ws.closed_with is not None and ws.closed_with[0] == 4408


async def test_frames_waiting_past_the_byte_bound_close_the_socket_with_4408() -> None:
    connection, ws = connect(max_queue=1024, max_queue_bytes=64 * 1024)
    ws.pause()
    big = json.dumps({"type": "x", "data": "y" * 20_000})
    assert [connection.send(big) for _ in range(4)] == [True, True, True, False]
    await eventually(lambda: ws.closed_with, what="the 4408 close")
    assert ws.closed_with is not None and ws.closed_with[0] == 4408


async def test_a_gap_in_a_runs_live_events_is_filled_from_the_log_in_order() -> None:
    log = [envelope("run_a", seq, seq) for seq in range(1, 6)]  # all stored; seq 4 never published

    def fill_gap(run_id: str):
        async def read(at: Position) -> list[Envelope]:
            return [e for e in log if e.run_id == run_id and e.seq > at.seq(run_id)]
        return read

    connection, ws = connect(fill_gap=fill_gap)
    for seq in (1, 2, 3, 5, 6):  # 4 is missing live (its publisher died between store and publish)
        if seq == 6:
            log.append(envelope("run_a", 6, 6))
        connection.deliver(log[seq - 1])
    connection.deliver(envelope("run_b", 2, 7))  # a run this socket joined late: no gap to fill
    await eventually(lambda: len(ws.sent) == 7, what=lambda: f"seven frames, not {ws.seqs()}")
    assert ws.seqs() == [("run_a", 1), ("run_a", 2), ("run_a", 3), ("run_a", 4), ("run_a", 5),
                         ("run_a", 6), ("run_b", 2)]


async def test_a_resume_by_cursor_leaves_out_what_the_socket_sent_before_it_came() -> None:
    connection, ws = connect()
    for seq in (1, 2):  # sent live: the client's first frame came after its patience ran out
        connection.deliver(envelope("run_a", seq, seq))
    stored = [envelope("run_a", seq, seq) for seq in (1, 2, 3)]

    async def read(_: Position) -> list[Envelope]:
        return stored

    connection.client_frame()  # the client's first frame, after those two went out
    await connection.resume(read, Position(cursor=None), skip=connection.sent_before_first_frame)
    await eventually(lambda: len(ws.sent) == 3, what=lambda: f"three frames, not {ws.seqs()}")
    assert ws.seqs() == [("run_a", 1), ("run_a", 2), ("run_a", 3)]  # each once
    await connection.close()


async def test_a_users_sockets_replay_one_at_a_time_and_a_gone_one_reads_nothing() -> None:
    budget = user_budget(SecuritySettings())
    first, _ = connect(budget=budget)
    second, second_ws = connect(budget=budget)
    reading, release, reads = asyncio.Event(), asyncio.Event(), []

    async def slow_read(_: Position) -> list[Envelope]:
        reads.append("first")
        reading.set()
        await release.wait()
        return [envelope("run_a", 1, 1)]

    async def read(_: Position) -> list[Envelope]:
        reads.append("second")
        return [envelope("run_b", 1, 2)]

    replaying = asyncio.create_task(first.resume(slow_read, Position()))
    await reading.wait()
    waiting = asyncio.create_task(second.resume(read, Position()))
    for _ in range(50):  # many more turns of the loop than the second needs to reach its read
        await asyncio.sleep(0)
    assert reads == ["first"] and not waiting.done()
    release.set()
    await asyncio.gather(replaying, waiting)
    assert reads == ["first", "second"]
    await eventually(lambda: second_ws.seqs() == [("run_b", 1)], what="the second socket's replay")

    await second.close()
    assert second.gone
    await second.resume(read, Position())  # a closed socket's buffered resume reads nothing
    assert reads == ["first", "second"]
    await first.close()
