"""The bridge: fan-out to the event's user only; after a bus loss, catch-up by the Subscriber protocol."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from adapters.bridge import AgentWebSocketBridge
from adapters.event_bus import BusListener, Envelope
from adapters.follow import Position, ReadStored
from adapters.websocket import SocketConnection
from domain.events import AgentEvent, EventType
from tests.fakes import InMemoryEventLog, RecordingSocket
from tests.helpers import eventually
from tests.unit.adapters.test_websocket import FakeWebSocket, limits


class SwitchableBus:
    """An event bus whose connection the test cuts and restores: what is published while cut is lost."""

    def __init__(self) -> None:
        self._listener: BusListener | None = None
        self.up = True

    async def start(self, listener: BusListener) -> None:
        self._listener = listener

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        if self.up and self._listener is not None:
            for envelope in envelopes:
                self._listener.deliver(envelope)

    async def stop(self) -> None:
        self._listener = None

    def cut(self) -> None:
        assert self._listener is not None
        self.up = False
        self._listener.bus_lost()

    async def restore(self) -> None:
        assert self._listener is not None
        self.up = True
        await self._listener.bus_restored()


class CursorSubscriber:
    """A subscriber of its own kind (not a socket): knows its newest cursor and keeps what it is given."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.connection_id = f"fake_{user_id}"
        self.position = Position()
        self.seqs: list[tuple[str, int]] = []

    @property
    def high_cursor(self) -> str | None:
        return self.position.cursor

    def deliver(self, envelope: Envelope) -> bool:
        if self.position.is_new(envelope):
            self.position.note(envelope)
            self.seqs.append((envelope.run_id, envelope.seq))
        return True

    async def catch_up(self, read: ReadStored) -> None:
        for envelope in await read(self.position):
            self.deliver(envelope)


def event(user_id: str, run_id: str, seq: int) -> AgentEvent:
    return AgentEvent(type=EventType.AGENT_MESSAGE_DELTA, user_id=user_id, run_id=run_id, thread_id="thr_1",
                      seq=seq, ts=datetime(2026, 11, 21, tzinfo=UTC), data={"delta": f"w{seq}"})


async def started() -> tuple[AgentWebSocketBridge, SwitchableBus, InMemoryEventLog]:
    log, bus = InMemoryEventLog(), SwitchableBus()
    bridge = AgentWebSocketBridge(event_log=log, bus=bus)
    await bridge.start()
    return bridge, bus, log


async def test_each_event_reaches_only_its_users_subscribers() -> None:
    bridge, _, _ = await started()
    alice, alice_too = RecordingSocket("usr_a", "a1"), RecordingSocket("usr_a", "a2")
    bob = RecordingSocket("usr_b")
    for subscriber in (alice, alice_too, bob):
        bridge.register(subscriber)
    await bridge.publish(event("usr_a", "run_a", 1))
    await bridge.publish(event("usr_b", "run_b", 1))
    bridge.unregister(alice_too)
    await bridge.publish(event("usr_a", "run_a", 2))
    assert [(f["run_id"], f["seq"]) for f in alice.frames] == [("run_a", 1), ("run_a", 2)]
    assert [(f["run_id"], f["seq"]) for f in alice_too.frames] == [("run_a", 1)]
    assert [(f["run_id"], f["seq"]) for f in bob.frames] == [("run_b", 1)]
    await bridge.stop()


async def test_after_a_bus_loss_a_subscriber_is_caught_up_from_where_it_stood() -> None:
    bridge, bus, _ = await started()
    alice, bob = CursorSubscriber("usr_a"), CursorSubscriber("usr_b")
    bridge.register(alice)
    bridge.register(bob)
    await bridge.publish(event("usr_a", "run_a", 1))
    bus.cut()
    await bridge.publish(event("usr_a", "run_a", 2))
    await bridge.publish(event("usr_b", "run_b", 1))
    assert alice.seqs == [("run_a", 1)] and bob.seqs == []
    await bus.restore()
    assert alice.seqs == [("run_a", 1), ("run_a", 2)]
    assert bob.seqs == [("run_b", 1)]
    await bridge.publish(event("usr_a", "run_a", 3))
    assert alice.seqs[-1] == ("run_a", 3)
    await bridge.stop()


async def test_a_subscriber_opened_while_the_bus_is_away_is_caught_up_too() -> None:
    bridge, bus, _ = await started()
    await bridge.publish(event("usr_a", "run_a", 1))
    bus.cut()
    late = CursorSubscriber("usr_a")
    bridge.register(late)
    await bridge.publish(event("usr_a", "run_a", 2))
    await bus.restore()
    assert late.seqs == [("run_a", 2)]  # from the newest event this process had seen
    await bridge.stop()


async def test_a_socket_is_caught_up_once_without_repeating_what_it_sent() -> None:
    bridge, bus, _ = await started()
    ws = FakeWebSocket()
    socket = SocketConnection(ws, user_id="usr_a", connection_id="conn_a",  # type: ignore[arg-type]
                              **limits(max_queue=16))
    socket.start()
    bridge.register(socket)
    await bridge.publish(event("usr_a", "run_a", 1))
    bus.cut()
    for seq in (2, 3):
        await bridge.publish(event("usr_a", "run_a", seq))
    await bus.restore()
    await bridge.publish(event("usr_a", "run_a", 4))
    await eventually(lambda: len(ws.sent) == 4, what=lambda: f"four frames, not {ws.seqs()}")
    assert ws.seqs() == [("run_a", seq) for seq in (1, 2, 3, 4)]
    assert ws.sent[1]["data"] == {"delta": "w2"}
    await socket.close()
    await bridge.stop()
