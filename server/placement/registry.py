"""The served models: one pool of replicas per configured model, found by name or alias (or by the
name of a LoRA adapter it serves).

Each pool holds its replicas (backends built from the same settings, or one per gRPC target), its
router (server/placement/router.py), its admission gate and its load state. Eager pools load concurrently in
the background at start-up, so /health answers at once while /ready says 503 until they are
loaded; a ``lazy`` pool loads at its first request, and one with ``idle_unload_s`` unloads after
that long without requests. A replica that fails to load is tried again in the background with a
growing delay (backends/backoff.py) until it loads or the pool unloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from dataclasses import replace

from lmgate.backends.backoff import Backoff
from lmgate.backends.base import Backend
from lmgate.backends.errors import ModelLoadError
from lmgate.backends.registry import create_backend
from lmgate.backends.types import BackendStats
from lmgate.server.errors import ModelNotFoundError, ServiceUnavailableError
from lmgate.server.placement.admission import AdmissionGate
from lmgate.server.placement.router import Router, RouterConfig
from lmgate.server.settings import ModelSettings, adapters_of

log = logging.getLogger(__name__)


class ModelState(enum.StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ModelPool:
    """One model: its replicas and how requests are spread over them. Owned by the event loop."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.replicas: list[Backend] = [create_backend(self.name, c) for c in _replica_configs(settings)]
        self.router = Router.of(
            len(self.replicas), RouterConfig(policy=settings.routing, epsilon=settings.affinity_max_load - 1)
        )
        self.gate = AdmissionGate(self.name, settings.max_running, settings.max_waiting)
        self.state = ModelState.UNLOADED if settings.lazy else ModelState.LOADING
        self.loaded = [False] * len(self.replicas)
        self.created = int(time.time())
        self.last_used = time.monotonic()
        self._loading: asyncio.Task[None] | None = None
        self._retries: dict[int, asyncio.Task[None]] = {}
        self._load_errors: dict[int, BaseException] = {}

    @property
    def adapters(self) -> list[str]:
        """The names of the LoRA adapters this pool serves besides its base model."""
        return [a.name for a in adapters_of(self.settings)]

    @property
    def backend_kind(self) -> str:
        return self.settings.backend

    @property
    def primary(self) -> Backend:
        """A replica to ask about the model (info, tokenizer): the first loaded, healthy one."""
        return next((r for r, ok in zip(self.replicas, self.loaded, strict=True) if ok and r.healthy()),
                    self.replicas[0])  # fmt: skip

    @property
    def unusable(self) -> frozenset[int]:
        """Replicas that did not load or report themselves unhealthy: never routed to."""
        return frozenset(i for i, r in enumerate(self.replicas) if not self.loaded[i] or not r.healthy())

    def healthy(self) -> bool:
        return self.state is ModelState.READY and len(self.unusable) < len(self.replicas)

    @property
    def status(self) -> str:
        """The state as /ready shows it: ``restarting`` for a loaded pool none of whose replicas can serve."""
        if self.state is ModelState.READY and not self.healthy():
            return "restarting"
        return self.state.value

    @property
    def load_errors(self) -> list[BaseException]:
        """Why replicas failed their latest attempt to load, in replica order (empty once all loaded)."""
        return [self._load_errors[i] for i in sorted(self._load_errors)]

    @property
    def cannot_load(self) -> bool:
        """Failed, and every replica's reason says retrying cannot help (missing file, too big…)."""
        return self.state is ModelState.FAILED and all(isinstance(e, ModelLoadError) for e in self.load_errors)

    def routable(self, now: float) -> bool:
        """Some replica is loaded, healthy and not ejected by the router."""
        return self.healthy() and any(r.index not in self.unusable for r in self.router.available(now))

    async def ensure_loaded(self) -> None:
        """Load the replicas if they are not (once, whoever asks first); ServiceUnavailable if that fails."""
        if self.state is not ModelState.READY:
            if self._loading is None or (self._loading.done() and self.state is ModelState.UNLOADED):
                self._loading = asyncio.ensure_future(self._load())
            await asyncio.shield(self._loading)
        if self.state is not ModelState.READY:
            raise ServiceUnavailableError(f"model `{self.name}` failed to load; see the server log", param="model")

    async def _load(self) -> None:
        self.state = ModelState.LOADING
        results = await asyncio.gather(*(r.start() for r in self.replicas), return_exceptions=True)
        self.loaded = [not isinstance(r, BaseException) for r in results]
        self._load_errors = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
        for i, result in enumerate(results):
            if isinstance(result, BaseException):
                log.error("model %s: replica %d failed to load: %s", self.name, i, result)
                self._retries[i] = asyncio.create_task(self._retry(i))
        # A pool serves with the replicas that loaded; it fails only when none did.
        self.state = ModelState.FAILED if not any(self.loaded) else ModelState.READY
        if self.state is ModelState.READY:
            self._log_ready()

    def _log_ready(self) -> None:
        info = self.primary.info
        log.info("model %s ready: %d of %d replica(s), %s backend, context %d", self.name, sum(self.loaded),
                 len(self.replicas), info.backend, info.context_length)  # fmt: skip

    async def _retry(self, index: int) -> None:
        """Load replica ``index`` again until it loads; the pool turns ready with it if it had failed."""
        backoff = Backoff(initial_s=1.0, maximum_s=60.0)
        while True:
            delay = backoff.failed(time.monotonic())
            log.info("model %s: trying replica %d again in %.0f s", self.name, index, delay)
            await asyncio.sleep(delay)
            try:
                await self.replicas[index].start()
            except Exception as exc:
                log.error("model %s: replica %d failed to load again: %s", self.name, index, exc)
                self._load_errors[index] = exc  # the latest reason is the one reported
                continue
            self.loaded[index] = True
            del self._retries[index]
            self._load_errors.pop(index, None)
            if self.state is ModelState.FAILED:
                self.state = ModelState.READY
                self._log_ready()
            return

    async def unload(self) -> None:
        retries, self._retries = list(self._retries.values()), {}
        for task in retries:
            task.cancel()
        await asyncio.gather(*retries, return_exceptions=True)
        await asyncio.gather(*(r.shutdown() for r in self.replicas), return_exceptions=True)
        self.state = ModelState.UNLOADED
        self.loaded = [False] * len(self.replicas)
        self._loading = None

    def stats(self) -> BackendStats:
        """The replicas' stats summed."""
        if self.state is not ModelState.READY:
            return BackendStats()
        total = BackendStats()
        for replica, ok in zip(self.replicas, self.loaded, strict=True):
            if not ok:
                continue
            s = replica.stats()
            total = replace(
                total,
                **{f: getattr(total, f) + getattr(s, f) for f in BackendStats.__dataclass_fields__},
            )
        return total


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


def _replica_configs(settings: ModelSettings) -> list[ModelSettings]:
    """One config per replica: a gRPC model lists its workers as targets, others repeat themselves."""
    targets = getattr(settings, "target", None)
    if isinstance(targets, list):
        return [settings.model_copy(update={"target": t}) for t in targets]
    return [settings] * settings.replicas
