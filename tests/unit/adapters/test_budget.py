"""TokenBucket and UserBudget: a burst, then a pace; debt is a wait shared by a user's sockets."""

from __future__ import annotations

from adapters.budget import TokenBucket, UserBudget


def test_a_bucket_gives_its_burst_then_asks_for_a_wait_in_proportion_to_the_debt() -> None:
    bucket = TokenBucket(per_s=10, burst=3)
    assert [bucket.charge(1) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert 0.09 < bucket.charge(1) <= 0.1
    assert 1.0 < bucket.charge(10) <= 1.1


def test_a_user_in_debt_waits_however_it_got_there() -> None:
    budget = UserBudget(bytes_per_s=4096, bytes_burst=4096, replay_per_s=100, replay_burst=100)
    budget.read(3000)
    assert budget.wait_s() == 0.0
    budget.replayed(300)  # 200 past the burst: two seconds at 100 a second
    assert 1.9 < budget.wait_s() <= 2.0
    budget.read(10)  # counted as 1 KiB: a quarter of a second of debt, shorter than the two
    assert 1.9 < budget.wait_s() <= 2.0


def test_small_frames_cost_at_least_a_kibibyte_each() -> None:
    budget = UserBudget(bytes_per_s=1024, bytes_burst=4096, replay_per_s=1, replay_burst=1)
    for _ in range(5):
        budget.read(2)
    assert 0.9 < budget.wait_s() <= 1.0


def test_frames_that_ask_the_database_and_refused_sockets_cost_more_than_their_bytes() -> None:
    budget = UserBudget(bytes_per_s=8192, bytes_burst=8192, replay_per_s=1, replay_burst=1)
    budget.asked_database()  # 8 KiB: the whole burst
    assert budget.wait_s() == 0.0
    budget.asked_database()
    assert 0.9 < budget.wait_s() <= 1.0
    budget.refused_socket()  # 16 KiB more: two seconds on top
    assert 2.9 < budget.wait_s() <= 3.0

