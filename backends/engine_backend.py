"""What every backend with an in-process engine thread shares: stats, health and shutdown."""

from __future__ import annotations

import asyncio

from lmgate.backends.base import Backend
from lmgate.backends.engine_thread import EngineThread
from lmgate.backends.types import BackendStats


class EngineBackend(Backend):
    """A backend whose engine (``_engine``, set by ``start()``) runs on an ``EngineThread``."""

    _engine: EngineThread | None = None

    def stats(self) -> BackendStats:
        return self._engine.stats() if self._engine is not None else BackendStats()

    def healthy(self) -> bool:
        return self._engine is not None and self._engine.failed is None

    async def shutdown(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await asyncio.to_thread(engine.stop)
