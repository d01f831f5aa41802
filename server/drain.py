"""Graceful stop (SIGTERM): stop taking work, finish what is in flight, then let the server exit.

On ``run()``: /ready turns 503 and gRPC health NOT_SERVING (so load balancers and Kubernetes stop
sending), new inference requests get 503 / UNAVAILABLE ("shutting down"), and in-flight requests
— streams included — run to their end, for up to ``timeout_s``. The server then shuts down as
usual (whatever is still running is aborted).
"""

from __future__ import annotations

import asyncio
import logging

from lmgate.server.model_registry import ModelRegistry

log = logging.getLogger(__name__)


class Drain:
    def __init__(self, registry: ModelRegistry, timeout_s: float) -> None:
        self.registry = registry
        self.timeout_s = timeout_s
        self.draining = False
        self.on_begin: list[object] = []  # async callables run when draining begins (gRPC health)

    def in_flight(self) -> int:
        return sum(p.gate.running + p.gate.waiting for p in self.registry.pools.values())

    async def run(self) -> None:
        self.draining = True
        log.info("draining: %d request(s) in flight, waiting up to %.0f s", self.in_flight(), self.timeout_s)
        for callback in self.on_begin:
            await callback()  # type: ignore[operator]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while self.in_flight() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        log.info("drained (%d request(s) left)", self.in_flight())
