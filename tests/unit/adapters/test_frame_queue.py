"""FrameQueue and Signal: a socket writer's queue and a replay's wait for room, cheaper than asyncio's."""

from __future__ import annotations

import asyncio
import contextlib
import tracemalloc

from adapters.frame_queue import FrameQueue, Signal
from tests.helpers import eventually


async def test_items_come_out_in_order_and_a_waiting_get_wakes_on_put() -> None:
    queue: FrameQueue[str | None] = FrameQueue(2)
    queue.put("a")
    assert await queue.get() == "a"
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put("b")
    queue.put("c")
    assert await asyncio.wait_for(getter, 5) == "b"
    assert queue.qsize() == 1 and not queue.full()
    queue.put("d")
    assert queue.full()
    queue.put(None)  # past maxsize too: the caller decides whether a frame fits
    assert [await queue.get() for _ in range(3)] == ["c", "d", None]


async def test_a_cancelled_get_leaves_the_queue_usable() -> None:
    queue: FrameQueue[str] = FrameQueue(4)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    getter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await getter
    queue.put("a")
    queue.clear()
    assert queue.qsize() == 0
    queue.put("b")
    assert await asyncio.wait_for(queue.get(), 5) == "b"


async def test_a_signal_wakes_every_waiter_and_only_for_a_later_notify() -> None:
    signal = Signal()
    signal.notify()  # nobody waits: it is not remembered
    first, second = asyncio.create_task(signal.wait()), asyncio.create_task(signal.wait())
    await asyncio.sleep(0)
    assert not first.done() and not second.done()
    first.cancel()  # one waiter gone leaves the other waiting
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await asyncio.sleep(0)
    assert not second.done()
    signal.notify()
    await asyncio.wait_for(second, 5)
    later = asyncio.create_task(signal.wait())
    await asyncio.sleep(0)
    assert not later.done()
    signal.notify()
    await eventually(later.done, what="a wait begun after the first notify to end at the second")


async def test_an_idle_queue_and_signal_cost_a_third_of_asyncio_queue_and_event() -> None:
    def allocated(make) -> float:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept = [make() for _ in range(200)]
            return (tracemalloc.get_traced_memory()[0] - before) / len(kept)
        finally:
            tracemalloc.stop()

    ours = allocated(lambda: (FrameQueue(1024), Signal()))
    asyncio_ones = allocated(lambda: (asyncio.Queue(1024), asyncio.Event()))
    assert ours * 3 < asyncio_ones, (ours, asyncio_ones)
