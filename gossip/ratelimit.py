"""A token bucket on trio's clock (so autojump tests see it refill)."""

from __future__ import annotations

import trio


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` banked; starts full."""

    def __init__(self, rate: float, capacity: float):
        if rate <= 0 or capacity < 1:
            raise ValueError("a token bucket needs rate > 0 and capacity >= 1")
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._last = trio.current_time()

    def _refill(self) -> None:
        now = trio.current_time()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def take_nowait(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if there are that many; never waits."""
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    async def take(self, n: float = 1.0) -> None:
        """Wait until ``n`` tokens are there, then take them."""
        if n > self.capacity:
            raise ValueError(f"cannot take {n} tokens from a bucket of {self.capacity}")
        while not self.take_nowait(n):
            await trio.sleep((n - self._tokens) / self.rate)
