"""The per-user message rate limiter, with a clock the tests move by hand; and ChatService using it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dependency_injector import providers

from container import Container
from domain.chat import ChatService
from domain.errors import RateLimited
from domain.ratelimit import RateLimiter
from tests.conftest import make_settings
from tests.fakes import FixedClock, ScriptedModel, answer
from tests.unit.conftest import Fakes


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 11, 21, 12, 0, tzinfo=UTC))


def test_a_burst_up_to_the_limit_then_one_every_sixtieth_of_a_minute(clock: FixedClock) -> None:
    limiter = RateLimiter(per_minute=6, clock=clock)  # one token every 10 s
    for _ in range(6):
        assert limiter.try_acquire("usr_a") == 0.0
    assert limiter.try_acquire("usr_a") == pytest.approx(10.0)
    clock.advance(4)
    assert limiter.try_acquire("usr_a") == pytest.approx(6.0)  # a refused try takes nothing
    clock.advance(6)
    assert limiter.try_acquire("usr_a") == 0.0
    assert limiter.try_acquire("usr_a") == pytest.approx(10.0)


def test_acquire_raises_rate_limited_saying_when_to_send_again(clock: FixedClock) -> None:
    limiter = RateLimiter(per_minute=2, clock=clock)
    limiter.acquire("usr_a")
    limiter.acquire("usr_a")
    with pytest.raises(RateLimited) as raised:
        limiter.acquire("usr_a")
    assert raised.value.code == "rate_limited"
    assert raised.value.retry_after_s == pytest.approx(30.0)
    assert "30 seconds" in raised.value.message and "2 messages" in raised.value.message
    clock.advance(29.5)
    with pytest.raises(RateLimited) as raised:
        limiter.acquire("usr_a")
    assert "1 second." in raised.value.message  # rounded up, never "0 seconds"


def test_users_have_separate_buckets(clock: FixedClock) -> None:
    limiter = RateLimiter(per_minute=1, clock=clock)
    limiter.acquire("usr_a")
    with pytest.raises(RateLimited):
        limiter.acquire("usr_a")
    limiter.acquire("usr_b")  # not affected by usr_a
    assert limiter.remaining("usr_a") == 0 and limiter.remaining("usr_c") == 1


def test_a_full_minute_refills_the_whole_bucket_and_never_more(clock: FixedClock) -> None:
    limiter = RateLimiter(per_minute=3, clock=clock)
    for _ in range(3):
        limiter.acquire("usr_a")
    clock.advance(3600)  # idle an hour: still only a minute's worth
    for _ in range(3):
        limiter.acquire("usr_a")
    with pytest.raises(RateLimited):
        limiter.acquire("usr_a")


def test_idle_users_buckets_are_dropped(clock: FixedClock) -> None:
    limiter = RateLimiter(per_minute=5, clock=clock)
    for i in range(1000):
        limiter.acquire(f"usr_{i}")
    assert len(limiter) == 1000
    clock.advance(30)
    limiter.acquire("usr_late")
    assert len(limiter) == 1001  # nobody idle for a whole minute yet
    clock.advance(30)
    limiter.acquire("usr_latest")
    assert len(limiter) == 2  # the first thousand are full again: dropped, as if never seen
    clock.advance(60)
    assert len(limiter) == 0
    for _ in range(5):  # a dropped bucket comes back full, nothing lost
        limiter.acquire("usr_1")


def test_a_limited_user_who_keeps_trying_keeps_their_bucket(clock: FixedClock) -> None:
    limiter = RateLimiter(per_minute=1, clock=clock)
    limiter.acquire("usr_a")
    for _ in range(10):
        clock.advance(5)
        limiter.try_acquire("usr_b")
    # usr_a's bucket was touched 50 s ago: still held, still empty until 60 s have passed
    with pytest.raises(RateLimited):
        limiter.acquire("usr_a")


def test_a_clock_set_back_refills_nothing(clock: FixedClock) -> None:
    limiter = RateLimiter(per_minute=1, clock=clock)
    limiter.acquire("usr_a")
    clock.advance(-3600)
    with pytest.raises(RateLimited):
        limiter.acquire("usr_a")


def test_per_minute_must_be_positive(clock: FixedClock) -> None:
    with pytest.raises(ValueError, match="per_minute"):
        RateLimiter(per_minute=0, clock=clock)


# -- ChatService with the container's limiter -------------------------------------------------------


async def limited_chat(fake_container: Container, tmp_path, per_minute: int) -> ChatService:
    fake_container.settings.override(
        providers.Object(make_settings(tmp_path, security={"messages_per_minute": per_minute})))
    fake_container.chat_model.override(providers.Object(ScriptedModel(answer("ok"))))
    await fake_container.bridge().start()
    return await fake_container.chat_service()


async def test_chat_service_refuses_the_message_over_the_rate_and_other_users_go_on(
        fake_container: Container, fakes: Fakes, tmp_path) -> None:
    chat = await limited_chat(fake_container, tmp_path, per_minute=2)
    for i in range(2):
        run = (await chat.submit(user_id="usr_a", text=f"m{i}", request_id="req_1")).run
        await chat.wait("usr_a", run.id)
    with pytest.raises(RateLimited) as raised:
        await chat.submit(user_id="usr_a", text="one too many", request_id="req_1")
    assert raised.value.retry_after_s == pytest.approx(30.0)
    assert [m.text for m in fakes.messages.messages if m.user_id == "usr_a"].count("one too many") == 0
    run = (await chat.submit(user_id="usr_b", text="hello", request_id="req_2")).run  # unaffected
    await chat.wait("usr_b", run.id)
    fakes.clock.advance(30)
    run = (await chat.submit(user_id="usr_a", text="later", request_id="req_3")).run
    await chat.wait("usr_a", run.id)


async def test_a_retried_client_message_id_does_not_count(
        fake_container: Container, fakes: Fakes, tmp_path) -> None:
    chat = await limited_chat(fake_container, tmp_path, per_minute=2)
    first = await chat.submit(user_id="usr_a", text="hi", request_id="req_1", client_message_id="c1")
    for _ in range(5):  # retries after reconnects: the same run, never rate_limited
        again = await chat.submit(user_id="usr_a", text="hi", request_id="req_1", client_message_id="c1")
        assert again.duplicate and again.run.id == first.run.id
    await chat.wait("usr_a", first.run.id)
    second = await chat.submit(user_id="usr_a", text="next", request_id="req_1", client_message_id="c2")
    assert not second.duplicate
    await chat.wait("usr_a", second.run.id)
    with pytest.raises(RateLimited):
        await chat.submit(user_id="usr_a", text="third", request_id="req_1", client_message_id="c3")
    # the refused one was never stored, so a later retry of it is a new message, not a duplicate
    fakes.clock.advance(30)
    third = await chat.submit(user_id="usr_a", text="third", request_id="req_1", client_message_id="c3")
    assert not third.duplicate
    await chat.wait("usr_a", third.run.id)
