"""The one TokenBucket: refill arithmetic, try_take / retry_after / take, bad parameters.

Its users' tests: a peer's request budget in test_reqresp.py, the free tier's keyed
limiter in tests/node/test_ratelimit.py.
"""

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from aipg.gossip import TokenBucket


class FakeClock:
    """Seconds that only move when a test moves them."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_starts_full_and_refuses_when_empty():
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, capacity=3, clock=clock)
    assert bucket.retry_after() == 0.0
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after() == pytest.approx(0.5)
    assert bucket.retry_after(2) == pytest.approx(1.0)


def test_a_refused_take_takes_nothing():
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, capacity=3, clock=clock)
    assert bucket.try_take(2)
    assert not bucket.try_take(2)
    assert bucket.tokens == pytest.approx(1.0)
    assert bucket.try_take(1)


def test_bucket_refills_at_rate_up_to_capacity():
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, capacity=2, clock=clock)
    assert bucket.try_take(2)
    clock.now = 1.5
    assert bucket.tokens == pytest.approx(1.5)
    assert bucket.try_take()
    clock.now = 100.0
    assert bucket.tokens == 2
    assert bucket.is_full


def test_bucket_ignores_a_clock_that_steps_back():
    clock = FakeClock()
    clock.now = 10.0
    bucket = TokenBucket(rate=1.0, capacity=1, clock=clock)
    assert bucket.try_take()
    clock.now = 5.0
    assert not bucket.try_take()


@pytest.mark.parametrize(
    ("rate", "capacity"), [(0, 1), (-1, 1), (float("nan"), 1), (1, 0.5), (1, float("inf"))]
)
def test_bucket_rejects_bad_parameters(rate, capacity):
    with pytest.raises(ValueError):
        TokenBucket(rate, capacity, clock=FakeClock())


def test_bucket_rejects_amounts_it_can_never_grant():
    bucket = TokenBucket(1.0, 2, clock=FakeClock())
    for amount in (0, -1, 3, float("nan")):
        with pytest.raises(ValueError):
            bucket.try_take(amount)
        with pytest.raises(ValueError):
            bucket.retry_after(amount)


async def test_take_waits_exactly_until_a_token_is_there(autojump_clock):
    bucket = TokenBucket(rate=4.0, capacity=1)
    start = trio.current_time()
    for _ in range(5):
        await bucket.take()
    assert trio.current_time() - start == pytest.approx(1.0)


async def test_token_bucket_on_trio_time(autojump_clock):
    bucket = TokenBucket(rate=2.0, capacity=3)
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]
    start = trio.current_time()
    await bucket.take()
    assert trio.current_time() - start == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError):
        await bucket.take(4)


@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0.1, 3)), max_size=60))
def test_bucket_never_grants_more_than_capacity_plus_refill(steps):
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, capacity=3, clock=clock)
    granted = 0.0
    for advance, amount in steps:
        clock.now += advance
        if bucket.try_take(amount):
            granted += amount
        else:
            assert bucket.retry_after(amount) > 0
        assert 0 <= bucket.tokens <= 3
    assert granted <= 3 + 2.0 * clock.now + 1e-9
