"""Graceful stop (SIGTERM): stop taking work, finish what is in flight, then let the server exit.

On ``run()``: /ready turns 503 and gRPC health NOT_SERVING (so load balancers and Kubernetes stop
sending), new inference requests get 503 / UNAVAILABLE ("shutting down", Retry-After 1), and
in-flight requests — streams included — run to their end, for up to ``timeout_s``. Past that the
drain *cuts* what is left, each request the way its transport ends an error: a stream gets an
error event and ``[DONE]`` (gRPC: UNAVAILABLE), a request still queued or waiting for its first
token a 503; each is counted and logged like any other. The server then shuts down as usual.

Cutting works through the timers the dispatcher already runs every wait under (the request's
deadline): each in-flight wait is registered here while it runs (``watch``), and the cut moves
every registered timer to now. A wait started after the cut is refused by ``check``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from lmgate.server.errors import ServiceUnavailableError
from lmgate.server.placement.registry import ModelRegistry

log = logging.getLogger(__name__)

CUT_GRACE_S = 5.0
"""After the cut, how long the cut requests get to write their error before the server stops."""


class Drain:
    """The server's stopping state. Owned by the event loop."""

    def __init__(self, registry: ModelRegistry, timeout_s: float) -> None:
        self.registry = registry
        self.timeout_s = timeout_s
        self.draining = False
        self.cut = False
        """The timeout passed with requests in flight: whatever still waits is ended with ``cut_error()``."""
        self.on_begin: list[Callable[[], Awaitable[None]]] = []  # run when draining begins (gRPC health)
        self._timers: set[asyncio.Timeout] = set()

    def in_flight(self) -> int:
        return sum(p.gate.running + p.gate.waiting for p in self.registry.pools.values())

    def refused(self) -> ServiceUnavailableError:
        """The error for a request that arrives while the server drains."""
        return ServiceUnavailableError("the server is shutting down; retry on another replica", retry_after_s=1)

    def cut_error(self) -> ServiceUnavailableError:
        """The error a request in flight ends with when the drain times out."""
        return ServiceUnavailableError(
            f"the server is shutting down and the request did not finish within its drain timeout "
            f"(server.drain_timeout_s = {self.timeout_s:g} s); retry on another replica",
            retry_after_s=1,
        )

    def watch(self, timer: asyncio.Timeout) -> None:
        """Register ``timer`` (the request deadline of a wait now running) so that a cut can fire it.
        The caller must ``unwatch`` it when the wait ends, and, on TimeoutError, ask ``self.cut``."""
        if self.cut:
            timer.reschedule(asyncio.get_running_loop().time())
        self._timers.add(timer)

    def unwatch(self, timer: asyncio.Timeout) -> None:
        self._timers.discard(timer)

    def check(self) -> None:
        """Raise the cut error once the drain has cut (between two waits of a request)."""
        if self.cut:
            raise self.cut_error()

    async def run(self) -> None:
        """Drain: refuse new work, wait for in-flight work up to ``timeout_s``, then cut the rest."""
        self.draining = True
        log.info("draining: %d request(s) in flight, waiting up to %.0f s", self.in_flight(), self.timeout_s)
        for callback in self.on_begin:
            await callback()
        if not await self._settled(self.timeout_s):
            log.warning("drain timeout (%.0f s) passed: cutting %d request(s)", self.timeout_s, self.in_flight())
            self._cut_now()
            await self._settled(CUT_GRACE_S)
        log.info("drained (%d request(s) left)", self.in_flight())

    def _cut_now(self) -> None:
        self.cut = True
        now = asyncio.get_running_loop().time()
        for timer in self._timers:
            timer.reschedule(now)

    async def _settled(self, within_s: float) -> bool:
        """Wait until nothing is in flight, for at most ``within_s``; whether that happened."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while self.in_flight() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return not self.in_flight()
