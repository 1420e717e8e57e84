"""follow(): stored events, then live ones, with no gap and no repeat, bounded and ending where it should."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from adapters.event_bus import Envelope
from adapters.follow import REPLAY_PAGE, LiveQueue, Position, follow, paged


def envelope(run_id: str, seq: int, cursor: int, *, terminal: bool = False) -> Envelope:
    return Envelope(user_id="usr_a", run_id=run_id, seq=seq, cursor=f"{cursor:020d}",
                    type="agent_completed" if terminal else "agent_message_delta",
                    terminal=terminal, frame=f'{{"run_id":"{run_id}","seq":{seq}}}')


class StoredLog:
    """The log as `follow` reads it: a run's events after its seq, or the user's after the cursor."""

    def __init__(self, *stored: Envelope, run_id: str | None = None) -> None:
        self.stored = list(stored)
        self.run_id = run_id
        self.reads = 0
        self.on_read: Callable[[], None] = lambda: None

    async def read(self, at: Position) -> list[Envelope]:
        self.reads += 1
        self.on_read()
        if self.run_id is not None:
            return [e for e in self.stored if e.run_id == self.run_id and e.seq > at.seq(self.run_id)]
        return [e for e in self.stored if at.cursor is None or e.cursor > at.cursor]

    def store(self, *envelopes: Envelope) -> None:
        self.stored.extend(envelopes)


async def take(events: AsyncIterator[Envelope | None], count: int) -> list[tuple[str, int] | None]:
    """The next `count` things the follow yields, each within a deadline."""
    taken = []
    for _ in range(count):
        async with asyncio.timeout(5):
            item = await anext(events)
        taken.append(None if item is None else (item.run_id, item.seq))
    return taken


async def test_an_event_stored_while_the_log_is_read_comes_once_and_a_later_one_live() -> None:
    live = LiveQueue(16)
    log = StoredLog(envelope("run_a", 1, 1), envelope("run_a", 2, 2), run_id="run_a")
    third, fourth = envelope("run_a", 3, 3), envelope("run_a", 4, 4, terminal=True)

    def stored_during_the_read() -> None:
        if log.reads == 1:  # in the log and, already subscribed, in the queue too
            log.store(third)
            live.put(third)

    log.on_read = stored_during_the_read
    events = follow(live, log.read, Position(), run_id="run_a")
    assert await take(events, 3) == [("run_a", 1), ("run_a", 2), ("run_a", 3)]
    log.store(fourth)
    live.put(fourth)
    assert await take(events, 1) == [("run_a", 4)]
    assert [e async for e in events] == []  # the terminal event ended it


async def test_a_live_event_past_the_next_seq_is_filled_in_from_the_log() -> None:
    live = LiveQueue(16)
    log = StoredLog(run_id="run_a")
    events = follow(live, log.read, Position(), run_id="run_a")
    log.store(envelope("run_a", 1, 1), envelope("run_a", 2, 2))
    live.put(envelope("run_a", 2, 2))  # the live copy of seq 1 was lost on the way
    assert await take(events, 2) == [("run_a", 1), ("run_a", 2)]


async def test_an_overflowed_queue_is_dropped_and_the_log_read_from_where_it_stood() -> None:
    live = LiveQueue(2)
    log = StoredLog(envelope("run_a", 1, 1), run_id="run_a")
    events = follow(live, log.read, Position(), run_id="run_a")
    assert await take(events, 1) == [("run_a", 1)]
    more = [envelope("run_a", seq, seq) for seq in range(2, 7)]
    log.store(*more)
    assert [live.put(e) for e in more] == [True, True, False, False, False]
    assert live.overflowed
    reads = log.reads
    assert await take(events, 5) == [("run_a", seq) for seq in range(2, 7)]
    assert log.reads == reads + 1 and not live.overflowed and live.empty()


async def test_a_stored_terminal_event_ends_the_follow_without_waiting() -> None:
    live = LiveQueue(16)
    log = StoredLog(envelope("run_a", 1, 1), envelope("run_a", 2, 2, terminal=True), run_id="run_a")
    followed = [e async for e in follow(live, log.read, Position(), run_id="run_a")]
    assert [(e.run_id, e.seq) for e in followed] == [("run_a", 1), ("run_a", 2)]


async def test_a_follow_from_after_the_end_ends_when_told() -> None:
    log = StoredLog(envelope("run_a", 1, 1, terminal=True), run_id="run_a")

    async def ended() -> bool:
        return True

    assert [e async for e in follow(LiveQueue(4), log.read, Position({"run_a": 1}), run_id="run_a",
                                    ended=ended)] == []


async def test_idle_reads_the_log_again_then_yields_none() -> None:
    live = LiveQueue(4)
    log = StoredLog(run_id="run_a")
    events = follow(live, log.read, Position(), run_id="run_a", idle_s=0.01)
    assert await take(events, 1) == [None]
    log.store(envelope("run_a", 1, 1))  # stored, but its live copy never came (a bus was down)
    assert await take(events, 2) == [("run_a", 1), None]


async def test_a_user_follow_takes_every_run_after_the_cursor_and_drops_live_repeats() -> None:
    live = LiveQueue(16)
    log = StoredLog(envelope("run_a", 1, 1), envelope("run_b", 1, 2), envelope("run_a", 2, 3))
    live.put(envelope("run_b", 1, 2))  # delivered live while the log was read: already replayed
    live.put(envelope("run_b", 2, 4))
    events = follow(live, log.read, Position(cursor=f"{1:020d}"), caught_up_only=True)
    assert [(e.run_id, e.seq) async for e in events if e] == [("run_b", 1), ("run_a", 2), ("run_b", 2)]


async def test_a_run_follow_skips_other_runs_of_the_user() -> None:
    live = LiveQueue(16)
    log = StoredLog(run_id="run_a")
    live.put(envelope("run_b", 1, 1))
    live.put(envelope("run_a", 1, 2, terminal=True))
    assert [(e.run_id, e.seq) async for e in follow(live, log.read, Position(), run_id="run_a") if e] \
        == [("run_a", 1)]


async def test_a_paged_replay_reads_page_after_page_before_anything_live() -> None:
    total = REPLAY_PAGE * 2 + 3
    log = StoredLog(*(envelope("run_a", seq, seq) for seq in range(1, total + 1)))
    pages: list[int] = []

    async def read_page(at: Position, limit: int) -> list[Envelope]:
        page = (await log.read(at))[:limit]
        pages.append(len(page))
        return page

    live = LiveQueue(16)
    live.put(envelope("run_a", total + 1, total + 1))  # live meanwhile: after the whole history
    events = follow(live, paged(read_page), Position(cursor=None), caught_up_only=True)
    seqs = [item.seq async for item in events if item is not None]
    assert seqs == list(range(1, total + 2))  # every page, then the live one, each once
    assert pages == [REPLAY_PAGE, REPLAY_PAGE, 3]  # never one read of the whole history
