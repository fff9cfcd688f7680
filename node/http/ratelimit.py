"""Token buckets: the free tier's per-client rate limit.

A :class:`TokenBucket` holds up to ``capacity`` tokens and refills at ``rate`` tokens per
second; a request takes one. :class:`KeyedLimiter` keeps one bucket per key (a client
address) in bounded memory: when it is full, the least recently used bucket is dropped.
Dropping a bucket can only forgive a client the part of its burst it had used, so the
bound costs accuracy under a flood of distinct keys, never memory.

Time comes from ``clock`` (seconds, monotonic; ``trio.current_time`` by default), so
tests drive it with trio's ``autojump_clock`` or a plain function.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable

import trio

__all__ = ["KeyedLimiter", "RateLimited", "TokenBucket"]

Clock = Callable[[], float]


class RateLimited(Exception):
    """A bucket has no token now; ``retry_after`` is the seconds until it has one."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after:.3f} s")
        self.retry_after = retry_after


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``rate`` tokens per second.

    Starts full. ``rate`` and ``capacity`` must be positive (ValueError otherwise);
    ``capacity`` below 1 would never allow a request.
    """

    def __init__(self, rate: float, capacity: float, clock: Clock | None = None) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive number of tokens per second, got {rate}")
        if not (math.isfinite(capacity) and capacity >= 1):
            raise ValueError(f"capacity must be at least 1 token, got {capacity}")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._clock = clock or trio.current_time
        self._tokens = self.capacity
        self._updated = self._clock()

    @property
    def tokens(self) -> float:
        """Tokens available now (fractional)."""
        self._refill()
        return self._tokens

    @property
    def is_full(self) -> bool:
        """Whether the bucket has refilled completely (it then remembers nothing)."""
        return self.tokens >= self.capacity

    def take_nowait(self, amount: float = 1.0) -> None:
        """Take ``amount`` tokens now; raises RateLimited (with the wait) if there are too few.

        ``amount`` above ``capacity`` can never succeed: ValueError.
        """
        self._check_amount(amount)
        self._refill()
        if self._tokens >= amount:
            self._tokens -= amount
            return
        raise RateLimited((amount - self._tokens) / self.rate)

    async def take(self, amount: float = 1.0) -> None:
        """Take ``amount`` tokens, sleeping until the bucket has them.

        Waiters are not queued fairly: each retries after the wait it was told, so this
        suits one consumer per bucket (a connection's sender), not a crowd.
        """
        while True:
            try:
                self.take_nowait(amount)
                return
            except RateLimited as limited:
                await trio.sleep(limited.retry_after)

    def _check_amount(self, amount: float) -> None:
        if not (math.isfinite(amount) and 0 < amount <= self.capacity):
            raise ValueError(f"amount must be in (0, {self.capacity}], got {amount}")

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)  # a clock that steps back refills nothing
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._updated = now


class KeyedLimiter:
    """One :class:`TokenBucket` per key, at most ``max_keys`` of them (LRU eviction).

    The table never holds more than ``max_keys`` buckets; :meth:`prune` drops the ones
    that have refilled (call it now and then to give memory back).
    """

    def __init__(
        self,
        rate: float,
        capacity: float,
        *,
        max_keys: int = 65_536,
        clock: Clock | None = None,
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        TokenBucket(rate, capacity, clock=lambda: 0.0)  # validates rate and capacity
        self.rate = rate
        self.capacity = capacity
        self.max_keys = max_keys
        self._clock = clock or trio.current_time
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    @classmethod
    def per_minute(cls, requests: int, **kwargs) -> KeyedLimiter:
        """``requests`` per minute with a burst of the same number."""
        return cls(requests / 60.0, float(requests), **kwargs)

    def __len__(self) -> int:
        return len(self._buckets)

    def take_nowait(self, key: Hashable, amount: float = 1.0) -> None:
        """Take from ``key``'s bucket; raises RateLimited with the wait if it is empty."""
        self._bucket(key).take_nowait(amount)

    def prune(self) -> int:
        """Drop every bucket that has refilled (it limits nothing); returns how many."""
        full = [key for key, bucket in self._buckets.items() if bucket.is_full]
        for key in full:
            del self._buckets[key]
        return len(full)

    def _bucket(self, key: Hashable) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return bucket
        while len(self._buckets) >= self.max_keys:
            self._make_room()
        bucket = self._buckets[key] = TokenBucket(self.rate, self.capacity, self._clock)
        return bucket

    def _make_room(self) -> None:
        # O(1): the least recently used bucket is the likeliest to have refilled (and then
        # carries no state); scanning for refilled ones here would make a flood of new keys
        # quadratic.
        self._buckets.popitem(last=False)
