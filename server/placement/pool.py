"""One model's pool of replicas: its backends (one per gRPC target, discovered worker, or copy), its
router, its admission gate and its load state.

Eager pools load concurrently in the background at start-up, so /health answers at once while
/ready says 503 until they are loaded; a ``lazy`` pool loads at its first request, and one with
``idle_unload_s`` unloads after that long without requests. A replica that fails to load is tried
again in the background with a growing delay (backends/backoff.py) until it loads or the pool
unloads. A ``grpc`` pool with ``discovery`` adds and retires replicas at runtime (``set_targets``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import replace

from lmgate.backends.backoff import Backoff
from lmgate.backends.base import Backend
from lmgate.backends.errors import ModelLoadError
from lmgate.backends.grpc.discovery_config import GrpcDiscovery
from lmgate.backends.registry import create_backend
from lmgate.backends.types import BackendStats
from lmgate.server.errors import ServiceUnavailableError
from lmgate.server.placement.admission import AdmissionGate
from lmgate.server.placement.discovery import Discovery, log_change
from lmgate.server.placement.router import Router, RouterConfig
from lmgate.server.settings import ModelSettings, adapters_of

log = logging.getLogger(__name__)

_DISCOVERY = -1
"""The key of discovery's own load error among the replicas' (reported first)."""


class ModelState(enum.StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ModelPool:
    """One model: its replicas and how requests are spread over them. Owned by the event loop.

    Replicas are keyed by an id that is never reused. A fixed pool's are 0 … n-1; a pool with
    ``discovery`` gets one replica per discovered address at runtime (``set_targets``): a new
    address is started (and retried until it loads), and one that left gets no new request from
    then on while its open streams finish (up to ``request_timeout_s``) before its connection closes.
    """

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.replicas: dict[int, Backend] = {}
        self.targets: dict[int, str] = {}
        """The address each discovered replica was added for, by id."""
        self.router = Router({}, RouterConfig(policy=settings.routing, epsilon=settings.affinity_max_load - 1))
        self.gate = AdmissionGate(self.name, settings.max_running, settings.max_waiting)
        self.state = ModelState.UNLOADED if settings.lazy else ModelState.LOADING
        self.loaded: set[int] = set()
        self.created = int(time.time())
        self.last_used = time.monotonic()
        self._next_id = 0
        self._loading: asyncio.Task[None] | None = None
        self._retries: dict[int, asyncio.Task[None]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._unloading = False
        """``unload`` runs: a removed replica is closed without waiting for its streams (``_retire``)."""
        self._load_errors: dict[int, BaseException] = {}
        config = getattr(settings, "discovery", None)
        self.discovery = Discovery(self.name, config, self.set_targets) if isinstance(config, GrpcDiscovery) else None
        for replica_settings in _replica_configs(settings):
            self._add(replica_settings)

    def _add(self, replica_settings: ModelSettings, target: str = "") -> int:
        index, self._next_id = self._next_id, self._next_id + 1
        self.replicas[index] = create_backend(self.name, replica_settings)
        if target:
            self.targets[index] = target
        self.router.add(index, target)
        return index

    @property
    def adapters(self) -> list[str]:
        """The names of the LoRA adapters this pool serves besides its base model."""
        return [a.name for a in adapters_of(self.settings)]

    @property
    def backend_kind(self) -> str:
        return self.settings.backend

    @property
    def primary(self) -> Backend:
        """A replica to ask about the model (info, tokenizer): the first loaded, healthy one (503 when the pool
        has no replica at all, as a discovered pool may)."""
        replicas = tuple(self.replicas.items())  # a copy: read from the metrics thread while discovery changes it
        usable = (r for i, r in replicas if i in self.loaded and r.healthy())
        replica = next(usable, None) or next((r for _, r in replicas), None)
        if replica is None:
            raise ServiceUnavailableError(f"model `{self.name}` has no replica now; retry shortly", param="model")
        return replica

    @property
    def unusable(self) -> frozenset[int]:
        """Replicas that did not load or report themselves unhealthy: never routed to. Also read by the
        metrics server's thread, while discovery may add or retire replicas: it iterates over a copy."""
        return frozenset(i for i, r in tuple(self.replicas.items()) if i not in self.loaded or not r.healthy())

    def healthy(self) -> bool:
        return self._serves(self.unusable)

    def _serves(self, unusable: frozenset[int]) -> bool:
        return self.state is ModelState.READY and len(unusable) < len(self.replicas)

    @property
    def status(self) -> str:
        """The state as /ready shows it: ``restarting`` for a loaded pool none of whose replicas can serve,
        ``discovering`` for a discovered one that has none."""
        if self.state is ModelState.READY and not self.replicas:
            return "discovering"
        if self.state is ModelState.READY and not self.healthy():
            return "restarting"
        return self.state.value

    @property
    def load_errors(self) -> list[BaseException]:
        """Why replicas failed their latest attempt to load, in replica order (empty once all loaded)."""
        return [self._load_errors[i] for i in sorted(self._load_errors)]

    @property
    def cannot_load(self) -> bool:
        """Failed, and every reason says retrying cannot help (missing file, too big, no credentials…)."""
        errors = self.load_errors
        return self.state is ModelState.FAILED and bool(errors) and all(isinstance(e, ModelLoadError) for e in errors)

    def routable(self, now: float) -> bool:
        """Some replica is loaded, healthy and not ejected by the router."""
        unusable = self.unusable  # once: it asks every replica whether it is healthy
        return self._serves(unusable) and any(r.index not in unusable for r in self.router.available(now))

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
        if self.discovery is not None:
            try:  # the first list adds the replicas (set_targets), which are started below
                await self.discovery.start(getattr(self.settings, "connect_timeout_s", 60.0))
            except ModelLoadError as exc:
                log.error("%s", exc)
                self._load_errors[_DISCOVERY] = exc
                self.state = ModelState.FAILED
                return
        indexes = list(self.replicas)
        results = await asyncio.gather(*(self.replicas[i].start() for i in indexes), return_exceptions=True)
        for i, result in zip(indexes, results, strict=True):
            if i not in self.replicas:
                continue  # removed by discovery while it started
            if isinstance(result, BaseException):
                log.error("model %s: replica %d failed to load: %s", self.name, i, result)
                self._load_errors[i] = result
                self._retries[i] = asyncio.create_task(self._retry(i))
            else:
                self.loaded.add(i)
        # A pool serves with the replicas that loaded; it fails only when none did. A discovered pool is
        # ready as soon as it watches: its replicas come and go.
        self.state = ModelState.READY if self.loaded or self.discovery is not None else ModelState.FAILED
        for i in self.replicas.keys() - set(indexes):  # discovered while the others started
            self._retries[i] = asyncio.create_task(self._retry(i, first_delay_s=0.0))
        if self.loaded:
            self._log_ready()

    def _log_ready(self) -> None:
        info = self.primary.info
        log.info("model %s ready: %d of %d replica(s), %s backend, context %d", self.name, len(self.loaded),
                 len(self.replicas), info.backend, info.context_length)  # fmt: skip

    async def _retry(self, index: int, first_delay_s: float | None = None) -> None:
        """Load replica ``index`` (again) until it loads; the pool turns ready with it if it had failed."""
        backoff = Backoff(initial_s=1.0, maximum_s=60.0)
        delay = first_delay_s
        while True:
            if delay is None:
                delay = backoff.failed(time.monotonic())
                log.info("model %s: trying replica %d again in %.0f s", self.name, index, delay)
            await asyncio.sleep(delay)
            delay = None
            try:
                await self.replicas[index].start()
            except Exception as exc:
                log.error("model %s: replica %d failed to load: %s", self.name, index, exc)
                self._load_errors[index] = exc  # the latest reason is the one reported
                continue
            self.loaded.add(index)
            del self._retries[index]
            self._load_errors.pop(index, None)
            if self.state is ModelState.FAILED:
                self.state = ModelState.READY
            if len(self.loaded) == 1:
                self._log_ready()
            return

    def set_targets(self, targets: frozenset[str]) -> None:
        """The discovered workers now: a replica for each new address (started in the background), and the
        replicas of addresses that left retired (``_retire``). Called by the pool's ``Discovery``."""
        current = {target: i for i, target in self.targets.items()}
        for target in sorted(targets - current.keys()):
            index = self._add(self.settings.model_copy(update={"target": target, "discovery": None}), target)
            log_change("replica_added", self.name, target, index, len(self.replicas))
            if self.state is not ModelState.LOADING:  # while loading, _load starts it with the others
                self._retries[index] = asyncio.create_task(self._retry(index, first_delay_s=0.0))
        for target in sorted(current.keys() - targets):
            index = current[target]
            backend = self.replicas.pop(index)
            del self.targets[index]
            self.router.remove(index)  # no new request; its prefix index goes too
            self.loaded.discard(index)
            self._load_errors.pop(index, None)
            retry = self._retries.pop(index, None)
            if retry is not None:
                retry.cancel()
            log_change("replica_removed", self.name, target, index, len(self.replicas))
            task = asyncio.create_task(self._retire(backend))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, backend: Backend) -> None:
        """Let the streams open on a removed replica finish (up to ``request_timeout_s``, or until the pool
        unloads: nothing waits for those streams then), then close it."""
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                while backend.stats().running > 0 and not self._unloading:
                    await asyncio.sleep(0.1)
        except TimeoutError:
            log.warning("model %s: a removed replica still had %d request(s) open after %s s: closing it",
                        self.name, backend.stats().running, self.settings.request_timeout_s)  # fmt: skip
        await backend.shutdown()

    @property
    def discovered(self) -> int | None:
        """How many ready workers discovery knows (None without discovery)."""
        return len(self.discovery.targets) if self.discovery is not None else None

    async def unload(self) -> None:
        if self.discovery is not None:
            await self.discovery.stop()
        retries, self._retries = list(self._retries.values()), {}
        for task in retries:
            task.cancel()
        await asyncio.gather(*retries, return_exceptions=True)
        await asyncio.gather(*(r.shutdown() for r in self.replicas.values()), return_exceptions=True)
        self._unloading = True  # without request_timeout_s a stuck stream would hold unload for ever
        await asyncio.gather(*self._retiring, return_exceptions=True)
        self._unloading = False
        if self.discovery is not None:  # found again at the next load
            for index in self.targets:
                self.router.remove(index)
            self.replicas.clear()
            self.targets.clear()
        self.state = ModelState.UNLOADED
        self.loaded = set()
        self._load_errors = {}
        self._loading = None

    def stats(self) -> BackendStats:
        """The replicas' stats summed."""
        if self.state is not ModelState.READY:
            return BackendStats()
        total = BackendStats()
        for index, replica in tuple(self.replicas.items()):  # a copy: see ``unusable``
            if index not in self.loaded:
                continue
            s = replica.stats()
            total = replace(
                total,
                **{f: getattr(total, f) + getattr(s, f) for f in BackendStats.__dataclass_fields__},
            )
        return total


def _replica_configs(settings: ModelSettings) -> list[ModelSettings]:
    """One config per replica: a gRPC model lists its workers as targets (or discovers them: none at
    first), others repeat themselves."""
    if getattr(settings, "discovery", None) is not None:
        return []
    targets = getattr(settings, "target", None)
    if isinstance(targets, list):
        return [settings.model_copy(update={"target": t}) for t in targets]
    return [settings] * settings.replicas
