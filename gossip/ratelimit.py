"""The one token bucket: a peer's request budget here, a free-tier client's in aipg.node.

A :class:`TokenBucket` holds up to ``capacity`` tokens and refills continuously at
``rate`` tokens per second. :meth:`~TokenBucket.try_take` never waits and says whether it
took; :meth:`~TokenBucket.retry_after` says how long until it would succeed;
:meth:`~TokenBucket.take` sleeps until it does.

Time comes from ``clock`` (seconds, monotonic; ``trio.current_time`` by default, so
autojump tests see the bucket refill), or a plain function in tests without trio.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

__all__ = ["Clock", "TokenBucket"]

Clock = Callable[[], float]


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``rate`` tokens per second; starts full.

    ``rate`` must be positive and ``capacity`` at least 1 (a smaller bucket could never
    grant a request), both finite: ValueError otherwise. An ``amount`` asked of any method
    must be in ``(0, capacity]``, since a larger one could never be granted: ValueError.
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

    def try_take(self, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens if the bucket has them now and return True; else take
        nothing and return False. Never waits."""
        self._check_amount(amount)
        self._refill()
        if self._tokens >= amount:
            self._tokens -= amount
            return True
        return False

    def retry_after(self, amount: float = 1.0) -> float:
        """Seconds until the bucket holds ``amount`` tokens (0.0 when it does now)."""
        self._check_amount(amount)
        return max(0.0, (amount - self.tokens) / self.rate)

    async def take(self, amount: float = 1.0) -> None:
        """Take ``amount`` tokens, sleeping until the bucket has them.

        Waiters are not queued fairly: each retries after the wait it was told, so this
        suits one consumer per bucket (a connection's sender), not a crowd.
        """
        while not self.try_take(amount):
            await trio.sleep(self.retry_after(amount))

    def _check_amount(self, amount: float) -> None:
        if not (math.isfinite(amount) and 0 < amount <= self.capacity):
            raise ValueError(f"amount must be in (0, {self.capacity}], got {amount}")

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)  # a clock that steps back refills nothing
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._updated = now
