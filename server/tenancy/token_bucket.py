"""A token bucket: ``capacity`` units, refilled at ``capacity`` per ``period_s``. Pure: the caller
passes the clock's time, so tests drive it with plain numbers.

Used per API key for requests per minute and tokens per minute (server/tenancy/quota.py). A
``take`` that does not fit takes nothing and says how long until it would; ``give_back`` corrects
an estimate afterwards, and may leave the bucket in debt (below zero) when the estimate was low.
"""

from __future__ import annotations

import math


class TokenBucket:
    def __init__(self, capacity: int, now: float, period_s: float = 60.0) -> None:
        self.capacity = capacity
        self.rate = capacity / period_s
        self.level = float(capacity)
        self._at = now

    def resize(self, capacity: int, now: float, period_s: float = 60.0) -> None:
        """A new limit (a reloaded key): the level keeps what was spent, capped at the new capacity."""
        self._refill(now)
        spent = self.capacity - self.level
        self.capacity, self.rate = capacity, capacity / period_s
        self.level = min(float(capacity), capacity - spent)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` (at most the capacity) would fit; 0 when it fits now."""
        self._refill(now)
        missing = min(amount, self.capacity) - self.level
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, amount: float, now: float) -> float:
        """Take ``amount`` (an amount over the capacity counts as the capacity, so it fits a full
        bucket) and return 0, or take nothing and return the seconds until it would fit."""
        wait = self.wait_for(amount, now)
        if wait == 0:
            self.level -= min(amount, self.capacity)
        return wait

    def give_back(self, amount: float, now: float) -> None:
        """Return ``amount`` (negative: charge more), never above the capacity nor below -capacity."""
        self._refill(now)
        self.level = max(-float(self.capacity), min(float(self.capacity), self.level + amount))

    def _refill(self, now: float) -> None:
        if now > self._at:
            self.level = min(float(self.capacity), self.level + (now - self._at) * self.rate)
        self._at = max(self._at, now)


def retry_after(wait_s: float) -> int:
    """Whole seconds for a Retry-After header: rounded up, at least 1."""
    return max(1, math.ceil(wait_s))
