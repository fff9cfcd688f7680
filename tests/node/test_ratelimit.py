"""KeyedLimiter: one bucket per client, refusals with the wait, bounded memory.

The bucket itself (aipg.gossip.TokenBucket) is tested in tests/gossip/test_ratelimit.py.
"""

import pytest

from aipg.node.http.ratelimit import KeyedLimiter, RateLimited
from aipg.testing.apikit import FakeClock


def test_keyed_limiter_refuses_with_the_wait_and_takes_nothing():
    clock = FakeClock()
    limiter = KeyedLimiter(2.0, 3, clock=clock)
    limiter.take_nowait("a", 2)
    with pytest.raises(RateLimited) as refused:
        limiter.take_nowait("a", 2)
    assert refused.value.retry_after == pytest.approx(0.5)
    limiter.take_nowait("a")  # the refused take left the one token there
    with pytest.raises(ValueError):
        limiter.take_nowait("a", 4)  # more than a bucket holds: never grantable


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
