"""The free tier's per-client rate limit, on the one token bucket of aipg.gossip.

A :class:`~aipg.gossip.TokenBucket` holds up to ``capacity`` tokens and refills at ``rate``
tokens per second; a request takes one. :class:`KeyedLimiter` keeps one bucket per key (a
client address) in bounded memory: when it is full, the least recently used bucket is
dropped. Dropping a bucket can only forgive a client the part of its burst it had used,
so the bound costs accuracy under a flood of distinct keys, never memory.

Time comes from ``clock`` (seconds, monotonic; ``trio.current_time`` by default), so
tests drive it with trio's ``autojump_clock`` or a plain function.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import trio

from aipg.gossip.ratelimit import Clock, TokenBucket

__all__ = ["KeyedLimiter", "RateLimited"]


class RateLimited(Exception):
    """A client's bucket has too few tokens now; ``retry_after`` is the seconds until it
    has enough."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after:.3f} s")
        self.retry_after = retry_after


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
        """Take ``amount`` from ``key``'s bucket; raises RateLimited with the wait if it has
        too few tokens, ValueError if ``amount`` is not in ``(0, capacity]``."""
        bucket = self._bucket(key)
        if not bucket.try_take(amount):
            raise RateLimited(bucket.retry_after(amount))

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
