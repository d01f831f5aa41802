"""Waiters queued per tenant and served round robin: one from each tenant in turn, first come first
served within a tenant. With a single tenant (no key records: everyone is ``""``) it is one FIFO.

A tenant that floods the queue fills only its own line: the next waiter of every other tenant is
at most one turn per tenant away. When the queue is full, a tenant with fewer waiters than the
longest line may take the place of that line's newest waiter (``displace``), so a flood cannot keep
the others out of the queue either. Plain data: no asyncio here; the gate owns the futures.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

W = TypeVar("W")


class FairQueue(Generic[W]):
    def __init__(self) -> None:
        self._lines: dict[str, deque[W]] = {}
        self._turns: deque[str] = deque()  # tenants with waiters, the next to serve first
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, tenant: str, waiter: W) -> None:
        line = self._lines.get(tenant)
        if line is None:
            line = self._lines[tenant] = deque()
            self._turns.append(tenant)
        line.append(waiter)
        self._size += 1

    def pop(self) -> W | None:
        """The next waiter in round-robin order, None when empty."""
        if not self._turns:
            return None
        tenant = self._turns.popleft()
        line = self._lines[tenant]
        waiter = line.popleft()
        if line:
            self._turns.append(tenant)
        else:
            del self._lines[tenant]
        self._size -= 1
        return waiter

    def remove(self, tenant: str, waiter: W) -> bool:
        """Take ``waiter`` out (it gave up); False when it is not queued."""
        line = self._lines.get(tenant)
        if line is None or waiter not in line:
            return False
        line.remove(waiter)
        self._size -= 1
        if not line:
            del self._lines[tenant]
            self._turns.remove(tenant)
        return True

    def can_displace(self, tenant: str) -> bool:
        """Whether ``tenant`` has at least two waiters fewer than the longest line of another tenant."""
        own = len(self._lines.get(tenant, ()))
        return any(len(line) > own + 1 for name, line in self._lines.items() if name != tenant)

    def displace(self, tenant: str) -> W | None:
        """Take out and return the newest waiter of the longest line if ``can_displace(tenant)``."""
        if not self.can_displace(tenant):
            return None
        longest = max(self._lines, key=lambda name: len(self._lines[name]))
        waiter = self._lines[longest][-1]
        self.remove(longest, waiter)
        return waiter

    def count(self, tenant: str) -> int:
        return len(self._lines.get(tenant, ()))
