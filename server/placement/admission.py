"""Per-model admission: at most ``max_running`` requests served at once, ``max_waiting`` queued.

A request beyond both is refused at once with 429 / RESOURCE_EXHAUSTED and a Retry-After, rather
than queued without bound. Waiting requests are let in by deficit round robin across tenants (API
keys with records, server/tenancy/records.py) weighted by their keys' ``weight`` and costed in tokens,
first-come first-served within one (server/placement/fair_queue.py); without key records every request is
tenant ``""`` and the queue is one FIFO. Owned by the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from lmgate.server.errors import RateLimitError
from lmgate.server.placement.fair_queue import FairQueue


class AdmissionGate:
    def __init__(self, name: str, max_running: int, max_waiting: int) -> None:
        self.name = name
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.running = 0
        self._waiters: FairQueue[asyncio.Future[None]] = FairQueue()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def has_room(self) -> bool:
        """A request would run now, without waiting."""
        return self.running < self.max_running and not self._waiters

    @property
    def full(self) -> bool:
        """A request would be refused."""
        return self.full_for("")

    def full_for(self, tenant: str) -> bool:
        """A request of ``tenant`` would be refused (a full queue still takes a tenant with a short line)."""
        return not self.has_room and self.waiting >= self.max_waiting and not self._waiters.can_displace(tenant)

    async def acquire(self, tenant: str = "", cost: int = 1, weight: int = 1) -> None:
        """Wait for a running slot; RateLimitError when the queue is full too (or when this waiter
        is displaced by another tenant's). ``cost`` (the request's token estimate) and ``weight``
        (its tenant's share) order the tenants' turns (server/placement/fair_queue.py)."""
        if self.has_room:
            self.running += 1
            return
        if self.waiting >= self.max_waiting:
            displaced = self._waiters.displace(tenant)
            if displaced is None:
                raise self._at_capacity()
            displaced.set_exception(self._at_capacity())
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.push(tenant, waiter, cost, weight)
        try:
            await waiter  # release() hands its slot over: running stays counted
        except BaseException:
            if self._waiters.remove(tenant, waiter):
                pass
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # the slot was handed to us as we were cancelled: pass it on
            raise

    def _at_capacity(self) -> RateLimitError:
        return RateLimitError(
            f"model `{self.name}` is at capacity ({self.running} running, {self.waiting} waiting); retry shortly",
            retry_after_s=1,
        )

    def release(self) -> None:
        while (waiter := self._waiters.pop()) is not None:
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str = "") -> AsyncIterator[None]:
        await self.acquire(tenant)
        try:
            yield
        finally:
            self.release()
