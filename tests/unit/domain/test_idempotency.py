"""InFlight: a retry racing the original gets the original's result or error, never runs twice."""

from __future__ import annotations

import asyncio

import pytest

from domain.idempotency import InFlight


async def test_a_racing_caller_gets_the_result_of_the_one_in_flight() -> None:
    flights: InFlight[str, int] = InFlight()
    go = asyncio.Event()

    async def original() -> int:
        async with flights.hold("k") as done:
            await go.wait()
            return done(42)

    task = asyncio.create_task(original())
    await asyncio.sleep(0)  # the original claims the key before its first await
    racing = flights.get("k")
    assert racing is not None and flights.get("other") is None
    go.set()
    assert await racing == 42 and await task == 42
    assert flights.get("k") is None  # released once done


async def test_a_failure_reaches_every_waiter_and_a_second_claim_is_refused() -> None:
    flights: InFlight[str, int] = InFlight()
    go = asyncio.Event()

    async def failing() -> int:
        async with flights.hold("k"):
            await go.wait()
            raise ValueError("duplicate")

    task = asyncio.create_task(failing())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already in flight"):
        async with flights.hold("k"):
            pass
    racing = flights.get("k")
    go.set()
    with pytest.raises(ValueError, match="duplicate"):
        await racing  # type: ignore[misc]
    with pytest.raises(ValueError, match="duplicate"):
        await task
