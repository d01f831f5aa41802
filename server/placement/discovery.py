"""A pool's replicas found at runtime: the ``grpc`` backend's Kubernetes discovery, driven for a pool.

``Discovery`` runs the EndpointSlice watcher (backends/grpc/kubernetes.py) while its pool is loaded
and hands each new set of targets to the pool (``ModelPool.set_targets``), which adds a replica per
new address and retires the ones that left. Each change is one JSON line on logger
``lmgate.discovery``:

    {"event": "replica_added", "model": "chat", "target": "10.0.3.7:50051", "replica": 4, "replicas": 3}

The Kubernetes client is an optional extra (``pip install lmgate[kubernetes]``), imported only here
and only when a model asks for discovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
from collections.abc import Callable
from typing import Protocol

from lmgate.backends.errors import ModelLoadError
from lmgate.backends.grpc.discovery_config import GrpcDiscovery

log = logging.getLogger(__name__)
events = logging.getLogger("lmgate.discovery")


class _Watcher(Protocol):
    synced: asyncio.Event

    def connect(self) -> None: ...

    async def run(self) -> None: ...

    async def close(self) -> None: ...


class Discovery:
    """One pool's discovery; ``publish`` gets every new set of targets. Owned by the event loop."""

    def __init__(self, model: str, config: GrpcDiscovery, publish: Callable[[frozenset[str]], None]) -> None:
        self._model = model
        self._config = config
        self._publish = publish
        self._watcher: _Watcher | None = None
        self._task: asyncio.Task[None] | None = None
        self.targets: frozenset[str] = frozenset()
        """The ready targets last published (what ``lmgate_discovered_replicas`` shows)."""

    def _received(self, targets: frozenset[str]) -> None:
        self.targets = targets
        self._publish(targets)

    async def start(self, sync_timeout_s: float) -> None:
        """Start watching; wait up to ``sync_timeout_s`` for the first list (an API server that does not
        answer yet is retried in the background). ModelLoadError when the client is not installed or
        finds no credentials."""
        try:
            module = importlib.import_module("lmgate.backends.grpc.kubernetes")
        except ImportError as exc:
            raise ModelLoadError(
                f"model {self._model!r}: Kubernetes discovery needs the Kubernetes client: pip install "
                f"'lmgate[kubernetes]' ({exc})"
            ) from exc
        watcher: _Watcher = module.EndpointSliceWatcher(self._model, self._config.kubernetes, self._received)
        watcher.connect()
        self._watcher = watcher
        self._task = asyncio.create_task(watcher.run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watcher.synced.wait(), sync_timeout_s)
        if not watcher.synced.is_set():
            log.warning("model %s: no answer from the Kubernetes API within %.0f s; starting without replicas, "
                        "still trying", self._model, sync_timeout_s)  # fmt: skip

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._watcher is not None:
            await self._watcher.close()
            self._watcher = None
        self.targets = frozenset()


def log_change(event: str, model: str, target: str, replica: int, replicas: int) -> None:
    """The JSON line of one replica added (``replica_added``) or removed (``replica_removed``)."""
    line = {"event": event, "model": model, "target": target, "replica": replica, "replicas": replicas}
    events.info(json.dumps(line))
