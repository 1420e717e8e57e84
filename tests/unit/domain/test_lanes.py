"""ThreadLane: one run at a time per thread, the rest in order; a waiting run can be withdrawn."""

from __future__ import annotations

import asyncio

import pytest

from domain.lanes import ThreadLane


async def test_the_first_runs_at_once_and_the_rest_wait_their_turn_in_order() -> None:
    lane = ThreadLane()
    first, second, third = lane.join("run_1"), lane.join("run_2"), lane.join("run_3")
    assert first.done() and first.result() is True and not second.done() and not third.done()
    assert lane.busy and lane.active == "run_1" and lane.waiting_ids() == ["run_2", "run_3"]
    lane.leave("run_1")
    assert second.result() is True and lane.active == "run_2" and not third.done()
    lane.leave("run_2")
    lane.leave("run_3")
    assert lane.idle and lane.active is None


async def test_a_withdrawn_run_learns_it_lost_its_place_and_the_next_one_moves_up() -> None:
    lane = ThreadLane()
    lane.join("run_1")
    second, third = lane.join("run_2"), lane.join("run_3")
    assert lane.withdraw("run_2") and not lane.withdraw("run_2") and not lane.withdraw("run_1")
    assert await lane.wait_turn("run_2", second) is False
    lane.leave("run_1")
    assert await lane.wait_turn("run_3", third) is True and lane.active == "run_3"


async def test_leaving_out_of_turn_changes_nothing() -> None:
    lane = ThreadLane()
    lane.join("run_1")
    lane.join("run_2")
    lane.leave("run_2")  # not its turn: ignored
    assert lane.active == "run_1" and lane.waiting_ids() == ["run_2"]


async def test_a_waiter_cancelled_before_its_turn_leaves_the_line_and_one_cancelled_at_its_turn_passes_it_on(
) -> None:
    lane = ThreadLane()
    lane.join("run_1")
    second = lane.join("run_2")
    waiting = asyncio.create_task(lane.wait_turn("run_2", second))
    await asyncio.sleep(0)  # the task is now awaiting its turn
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert lane.waiting_ids() == []
    third = lane.join("run_3")
    waiting = asyncio.create_task(lane.wait_turn("run_3", third))
    await asyncio.sleep(0)
    lane.leave("run_1")  # run_3's turn comes, and its waiter is cancelled before it wakes
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert lane.idle  # the turn it never used is passed on, not kept
