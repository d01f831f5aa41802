"""Waiters queued per tenant and served by deficit round robin: each tenant, when its turn comes,
is credited ``quantum × weight`` and lets in waiters while its credit covers their cost (their
token estimate), then the next tenant's turn begins; first come first served within a tenant.
Tenants therefore share a saturated model by tokens in proportion to their weights, whatever
their request sizes; with equal costs (and a quantum of 1) it is plain round robin, and with a
single tenant (no key records: everyone is ``""``) one FIFO.

A tenant that floods the queue fills only its own line: every other tenant's next waiter is at
most one turn per tenant away. When the queue is full, a tenant with at least two waiters fewer
than the longest line takes the place of that line's newest waiter (``displace``), so a flood
cannot keep the others out of the queue either. Plain data: no asyncio; the gate owns the futures.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

W = TypeVar("W")
QUANTUM = 256
"""Credit (tokens) a tenant of weight 1 gets per turn: at most one request of the default
max_tokens (256) a turn, a few small ones; a large request waits a few turns to gather its credit."""


@dataclass
class _Line(Generic[W]):
    weight: int
    waiters: deque[tuple[W, int]] = field(default_factory=deque)
    credit: int = 0
    in_turn: bool = False


class FairQueue(Generic[W]):
    def __init__(self, quantum: int = QUANTUM) -> None:
        self.quantum = quantum
        self._lines: dict[str, _Line[W]] = {}
        self._turns: deque[str] = deque()  # tenants with waiters; the head's turn now
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, tenant: str, waiter: W, cost: int = 1, weight: int = 1) -> None:
        """Queue ``waiter`` of ``tenant`` (its share: ``weight``; its size: ``cost`` ≥ 1)."""
        line = self._lines.get(tenant)
        if line is None:
            line = self._lines[tenant] = _Line(weight)
            self._turns.append(tenant)
        line.weight = weight  # a reloaded key's new weight applies from its next waiter
        line.waiters.append((waiter, max(1, cost)))
        self._size += 1

    def pop(self) -> W | None:
        """The next waiter by deficit round robin, None when empty."""
        while self._turns:
            tenant = self._turns[0]
            line = self._lines[tenant]
            if not line.in_turn:  # its turn begins
                line.credit += self.quantum * line.weight
                line.in_turn = True
            waiter, cost = line.waiters[0]
            if line.credit >= cost:
                line.credit -= cost
                line.waiters.popleft()
                self._size -= 1
                if not line.waiters:
                    self._drop(tenant)
                return waiter
            line.in_turn = False  # its turn ends; the credit left is kept for the next
            self._turns.rotate(-1)
        return None

    def remove(self, tenant: str, waiter: W) -> bool:
        """Take ``waiter`` out (it gave up); False when it is not queued."""
        line = self._lines.get(tenant)
        entry = next((e for e in line.waiters if e[0] is waiter), None) if line is not None else None
        if line is None or entry is None:
            return False
        line.waiters.remove(entry)
        self._size -= 1
        if not line.waiters:
            self._drop(tenant)
        return True

    def can_displace(self, tenant: str) -> bool:
        """Whether ``tenant`` has at least two waiters fewer than the longest line of another tenant."""
        own = self.count(tenant)
        return any(len(line.waiters) > own + 1 for name, line in self._lines.items() if name != tenant)

    def displace(self, tenant: str) -> W | None:
        """Take out and return the newest waiter of the longest line if ``can_displace(tenant)``."""
        if not self.can_displace(tenant):
            return None
        longest = max(self._lines, key=lambda name: len(self._lines[name].waiters))
        waiter = self._lines[longest].waiters[-1][0]
        self.remove(longest, waiter)
        return waiter

    def count(self, tenant: str) -> int:
        line = self._lines.get(tenant)
        return 0 if line is None else len(line.waiters)

    def _drop(self, tenant: str) -> None:
        """An emptied line leaves the rotation and loses its credit (DRR: no saving up while idle)."""
        del self._lines[tenant]
        self._turns.remove(tenant)
