"""Per-model admission: at most ``max_running`` requests served at once, ``max_waiting`` queued.

A request beyond both is refused at once with 429 / RESOURCE_EXHAUSTED and a Retry-After, rather
than queued without bound. Waiting requests are let in first-come first-served. Owned by the
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from lmgate.server.errors import RateLimitError


class AdmissionGate:
    def __init__(self, name: str, max_running: int, max_waiting: int) -> None:
        self.name = name
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

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
        return not self.has_room and self.waiting >= self.max_waiting

    async def acquire(self) -> None:
        """Wait for a running slot; RateLimitError when the queue is full too."""
        if self.has_room:
            self.running += 1
            return
        if self.waiting >= self.max_waiting:
            raise RateLimitError(
                f"model `{self.name}` is at capacity ({self.running} running, {self.waiting} waiting); retry shortly",
                retry_after_s=1,
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over: running stays counted
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed to us as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()
