"""TokenBucket and KeyedLimiter: refill arithmetic, waits, bounded memory."""

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from aipg.node.http.ratelimit import KeyedLimiter, RateLimited, TokenBucket

from .apikit import FakeClock


def test_bucket_starts_full_and_refuses_when_empty():
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, capacity=3, clock=clock)
    for _ in range(3):
        bucket.take_nowait()
    with pytest.raises(RateLimited) as refused:
        bucket.take_nowait()
    assert refused.value.retry_after == pytest.approx(0.5)


def test_bucket_refills_at_rate_up_to_capacity():
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, capacity=2, clock=clock)
    bucket.take_nowait(2)
    clock.now = 1.5
    assert bucket.tokens == pytest.approx(1.5)
    bucket.take_nowait()
    clock.now = 100.0
    assert bucket.tokens == 2
    assert bucket.is_full


def test_bucket_ignores_a_clock_that_steps_back():
    clock = FakeClock()
    clock.now = 10.0
    bucket = TokenBucket(rate=1.0, capacity=1, clock=clock)
    bucket.take_nowait()
    clock.now = 5.0
    with pytest.raises(RateLimited):
        bucket.take_nowait()


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
            bucket.take_nowait(amount)


async def test_take_waits_exactly_until_a_token_is_there(autojump_clock):
    bucket = TokenBucket(rate=4.0, capacity=1)
    start = trio.current_time()
    for _ in range(5):
        await bucket.take()
    assert trio.current_time() - start == pytest.approx(1.0)


@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0.1, 3)), max_size=60))
def test_bucket_never_grants_more_than_capacity_plus_refill(steps):
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, capacity=3, clock=clock)
    granted = 0.0
    for advance, amount in steps:
        clock.now += advance
        try:
            bucket.take_nowait(amount)
            granted += amount
        except RateLimited as limited:
            assert limited.retry_after > 0
        assert 0 <= bucket.tokens <= 3
    assert granted <= 3 + 2.0 * clock.now + 1e-9


def test_keyed_limiter_limits_each_key_separately():
    clock = FakeClock()
    limiter = KeyedLimiter.per_minute(2, clock=clock)
    for key in ("10.0.0.1", "10.0.0.2"):
        limiter.take_nowait(key)
        limiter.take_nowait(key)
    with pytest.raises(RateLimited) as refused:
        limiter.take_nowait("10.0.0.1")
    assert refused.value.retry_after == pytest.approx(30.0)
    clock.now = 30.0
    limiter.take_nowait("10.0.0.1")


def test_keyed_limiter_memory_is_bounded_and_evicts_least_recently_used():
    clock = FakeClock()
    limiter = KeyedLimiter(1.0, 1, max_keys=3, clock=clock)
    for key in range(1000):
        limiter.take_nowait(key)
        assert len(limiter) <= 3
    # the three most recent keys are still limited; an evicted one starts afresh
    with pytest.raises(RateLimited):
        limiter.take_nowait(999)
    limiter.take_nowait(0)


def test_keyed_limiter_recent_use_protects_from_eviction():
    clock = FakeClock()
    limiter = KeyedLimiter(1.0, 1, max_keys=2, clock=clock)
    limiter.take_nowait("a")
    limiter.take_nowait("b")
    with pytest.raises(RateLimited):
        limiter.take_nowait("a")  # touches "a": "b" is now the least recently used
    limiter.take_nowait("c")
    with pytest.raises(RateLimited):
        limiter.take_nowait("a")
    limiter.take_nowait("b")  # evicted, so a fresh bucket


def test_prune_drops_only_refilled_buckets():
    clock = FakeClock()
    limiter = KeyedLimiter(1.0, 2, clock=clock)
    limiter.take_nowait("old", 2)
    clock.now = 5.0
    limiter.take_nowait("new")
    assert limiter.prune() == 1
    assert len(limiter) == 1
    with pytest.raises(ValueError):
        KeyedLimiter(1.0, 1, max_keys=0)
