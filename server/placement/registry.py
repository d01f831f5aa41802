"""The served models: one pool of replicas per configured model (server/placement/pool.py), found by
name or alias (or by the name of a LoRA adapter it serves); loads the eager ones at start-up and
unloads idle ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from lmgate.server.errors import ModelNotFoundError
from lmgate.server.placement.pool import ModelPool, ModelState
from lmgate.server.settings import ModelSettings, adapters_of

__all__ = ["ModelPool", "ModelRegistry", "ModelState"]

log = logging.getLogger(__name__)


class ModelRegistry:
    """Every configured model's pool. Owned by the server's event loop."""

    def __init__(self, models: list[ModelSettings]) -> None:
        self.pools = {m.name: ModelPool(m) for m in models}
        self._names = {alias: m.name for m in models for alias in [m.name, *m.aliases]}
        self._adapters = {a.name: m.name for m in models for a in adapters_of(m)}
        self._names |= self._adapters
        self._reaper: asyncio.Task[None] | None = None

    @property
    def states(self) -> dict[str, str]:
        """Each model's status (``ModelPool.status``), by name."""
        return {name: pool.status for name, pool in self.pools.items()}

    async def start(self) -> None:
        """Load every eager model concurrently; watch idle ones to unload them."""
        if any(p.settings.idle_unload_s for p in self.pools.values()):
            self._reaper = asyncio.create_task(self._unload_idle())
        eager = [p for p in self.pools.values() if not p.settings.lazy]
        await asyncio.gather(*(p.ensure_loaded() for p in eager), return_exceptions=True)

    @property
    def ready(self) -> bool:
        """Every eager model is loaded and can serve (lazy ones load on demand)."""
        return all(p.healthy() for p in self.pools.values() if not p.settings.lazy)

    def cannot_serve(self) -> str | None:
        """After ``start()``: why the server can serve nothing, ever (every eager model failed to load
        for a reason retrying cannot fix); None otherwise."""
        eager = [p for p in self.pools.values() if not p.settings.lazy]
        if not eager or not all(p.cannot_load for p in eager):
            return None
        return "; ".join(f"model {p.name}: {p.load_errors[0]}" for p in eager)

    def resolve(self, model: str) -> str:
        """The canonical name of ``model`` (a name or an alias); raises ModelNotFoundError."""
        try:
            return self._names[model]
        except KeyError:
            raise ModelNotFoundError(model, sorted(self._names)) from None

    def adapter_of(self, model: str) -> str | None:
        """``model`` itself when it names a LoRA adapter (served by its base model's pool), else None."""
        return model if model in self._adapters else None

    def pool(self, model: str) -> ModelPool:
        return self.pools[self.resolve(model)]

    async def loaded(self, model: str) -> ModelPool:
        """The pool serving ``model``, loaded (lazy models load now): 404 unknown, 503 failed."""
        pool = self.pool(model)
        await pool.ensure_loaded()
        pool.last_used = time.monotonic()
        return pool

    async def _unload_idle(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for pool in self.pools.values():
                idle_s = pool.settings.idle_unload_s
                busy = pool.gate.running or pool.gate.waiting
                if idle_s and pool.state is ModelState.READY and not busy and now - pool.last_used > idle_s:
                    log.info("model %s idle for %.0f s: unloading", pool.name, now - pool.last_used)
                    await pool.unload()

    async def shutdown(self) -> None:
        """Unload every model (aborting what still runs: the server drained before, if asked to)."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(*(p.unload() for p in self.pools.values()), return_exceptions=True)
