"""The served models: one backend per configured model, found by name or alias.

Backends are created from the settings at start-up and loaded concurrently in the background, so
/health answers at once while /ready says 503 until every model is loaded.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time

from lmgate.backends.base import Backend
from lmgate.backends.registry import create_backend
from lmgate.server.errors import ModelNotFoundError, ServiceUnavailableError
from lmgate.server.settings import ModelSettings

log = logging.getLogger(__name__)


class ModelState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ModelRegistry:
    """Owned by the server's event loop."""

    def __init__(self, models: list[ModelSettings]) -> None:
        self.settings = {m.name: m for m in models}
        self.backends: dict[str, Backend] = {m.name: create_backend(m.name, m) for m in models}
        self.states = dict.fromkeys(self.backends, ModelState.LOADING)
        self.created = dict.fromkeys(self.backends, int(time.time()))
        self._names = {alias: m.name for m in models for alias in [m.name, *m.aliases]}

    async def start(self) -> None:
        """Load every model concurrently; a model that fails is logged and marked FAILED."""
        await asyncio.gather(*(self._start(name, backend) for name, backend in self.backends.items()))

    async def _start(self, name: str, backend: Backend) -> None:
        try:
            await backend.start()
        except Exception:
            log.exception("model %s failed to load", name)
            self.states[name] = ModelState.FAILED
        else:
            log.info("model %s ready: %s", name, backend.info)
            self.states[name] = ModelState.READY

    @property
    def ready(self) -> bool:
        return all(s is ModelState.READY for s in self.states.values())

    def resolve(self, model: str) -> str:
        """The canonical name of ``model`` (a name or an alias); raises ModelNotFoundError."""
        try:
            return self._names[model]
        except KeyError:
            raise ModelNotFoundError(model, sorted(self._names)) from None

    def get(self, model: str) -> Backend:
        """The loaded backend serving ``model``; raises 404 for an unknown name, 503 while not loaded."""
        name = self.resolve(model)
        state = self.states[name]
        if state is not ModelState.READY or not self.backends[name].healthy():
            raise ServiceUnavailableError(f"model `{name}` is {state.value}; retry shortly", param="model")
        return self.backends[name]

    def aliases(self, name: str) -> list[str]:
        return list(self.settings[name].aliases)

    async def shutdown(self, drain_timeout: float) -> None:
        await asyncio.gather(*(b.shutdown(drain_timeout) for b in self.backends.values()), return_exceptions=True)
