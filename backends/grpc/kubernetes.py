"""Kubernetes discovery for the ``grpc`` backend: the ready endpoints of a Service, watched.

The gateway lists the Service's EndpointSlices (``discovery.k8s.io/v1``, label
``kubernetes.io/service-name``), then watches them from the list's resourceVersion; every ready
endpoint address (``conditions.ready`` not false, not terminating) on the configured port is one
worker, ``host:port``. Each change publishes the whole set of targets to a callback (the model's
pool adds and removes replicas: server/placement/pool.py).

Failure handling, the informer pattern of client-go:
- a watch the server ends cleanly (its timeout) is resumed from the last resourceVersion, as
  client-go's reflector does: the API server replays every change after that version, or answers
  410 Gone;
- a ``410 Gone`` (the resourceVersion is too old), any other error event, a cut connection or a
  refused one re-lists and re-watches (a re-list also finds the deletions a watch from "now" would
  miss), after a growing delay (0.5 s doubling to 30 s; small again once a list succeeded and
  stayed up 10 s);
- every ``resync_s`` the slices are listed again anyway, so a connection that silently stopped
  delivering cannot keep the set stale;
- while the API server cannot be reached, the last known set stays (nothing is published).

NOTE: the client is lightkube (https://github.com/gtsystem/lightkube), not kubernetes_asyncio: it is
typed (mypy --strict reads its resource models; kubernetes_asyncio's generated API methods are
untyped), small (one package and its models instead of the generated client of every API group
plus aiohttp), loads in-cluster (service account) and kubeconfig credentials alike
(``KubeConfig.from_env``; the service account token is read again on each request, so the
kubelet's rotation of it is followed), and exposes a list's resourceVersion. Its own watch retries a 410 by
watching from "now" without a re-list, which would miss deletions: that is why the loop here
raises every error out of the watch and re-lists itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from lightkube import ApiError, AsyncClient, ConfigError, KubeConfig
from lightkube.core.client import LabelSelector
from lightkube.models.discovery_v1 import Endpoint
from lightkube.resources.discovery_v1 import EndpointSlice

from lmgate.backends.backoff import Backoff
from lmgate.backends.errors import ModelLoadError
from lmgate.backends.grpc.discovery_config import KubernetesDiscovery

log = logging.getLogger(__name__)

SERVICE_LABEL = "kubernetes.io/service-name"
GONE = 410


def slice_targets(endpoint_slice: EndpointSlice, config: KubernetesDiscovery) -> frozenset[str]:
    """The ``host:port`` of every ready endpoint of one slice on the configured port (empty when the
    slice does not carry that port). An endpoint whose ``ready`` is unset counts as ready (the API's
    own rule); a terminating one never does."""
    port = next(
        (p.port for p in endpoint_slice.ports or () if p.port is not None and config.port_matches(p.name, p.port)), None
    )
    if port is None:
        return frozenset()
    ipv6 = endpoint_slice.addressType == "IPv6"
    return frozenset(
        f"[{address}]:{port}" if ipv6 else f"{address}:{port}"
        for endpoint in endpoint_slice.endpoints or ()
        if _ready(endpoint)
        for address in endpoint.addresses[:1]  # the API: consumers use the first address only
    )


def _ready(endpoint: Endpoint) -> bool:
    conditions = endpoint.conditions
    if conditions is None:
        return True
    return conditions.ready is not False and conditions.terminating is not True


class EndpointSliceWatcher:
    """Watches one Service's EndpointSlices and calls ``publish(targets)`` with the whole set of ready
    targets whenever it changes (the first list included, even when empty). Owned by the event loop;
    ``run()`` runs until cancelled."""

    def __init__(self, model: str, config: KubernetesDiscovery, publish: Callable[[frozenset[str]], None]) -> None:
        self._model = model
        self._config = config
        self._publish = publish
        self._client: AsyncClient | None = None
        self._namespace = config.namespace
        self._published: frozenset[str] | None = None
        self.synced = asyncio.Event()
        """Set once the first list succeeded (and was published)."""

    @property
    def namespace(self) -> str:
        """The Service's namespace: configured, else the client's default (the pod's own)."""
        return self._namespace or "default"

    def connect(self) -> None:
        """Read the credentials: in a pod its service account, elsewhere ``KUBECONFIG`` (or ~/.kube/config).
        ModelLoadError when there are none (retrying cannot help)."""
        try:
            kube_config = KubeConfig.from_env()
        except ConfigError as exc:
            raise ModelLoadError(
                f"model {self._model!r}: Kubernetes discovery found no credentials (no service account in this pod, "
                f"no KUBECONFIG): {exc}"
            ) from exc
        self._client = AsyncClient(config=kube_config, namespace=self._config.namespace)
        self._namespace = self._config.namespace or self._client.namespace

    async def run(self) -> None:
        """List and watch for ever; errors are logged and retried, the last known targets kept."""
        if self._client is None:
            self.connect()
        backoff = Backoff(initial_s=0.5, maximum_s=30.0, stable_s=10.0)
        while True:
            try:
                await self._list_and_watch(backoff)
                continue  # resync_s passed: list again
            except ApiError as exc:
                if exc.status.code == GONE:
                    delay = backoff.failed(time.monotonic())
                    log.info("model %s: the EndpointSlice watch expired (410 Gone): listing again in %.1f s",
                             self._model, delay)  # fmt: skip
                    await asyncio.sleep(delay)
                    continue
                why = f"{exc.status.code} {exc.status.reason}: {exc.status.message}"
            except Exception as exc:  # the connection (httpx's errors), a malformed answer (the decoder's)
                why = f"{type(exc).__name__}: {exc}"
            delay = backoff.failed(time.monotonic())
            kept = len(self._published or ())
            log.warning("model %s: Kubernetes API (service %s/%s): %s; keeping %d known replica(s), trying again "
                        "in %.1f s", self._model, self.namespace, self._config.service, why, kept, delay)  # fmt: skip
            await asyncio.sleep(delay)

    async def _list_and_watch(self, backoff: Backoff) -> None:
        """One list, then the watch from its version until ``resync_s`` passes (returns) or it fails (raises).
        A list that succeeded counts as up for ``backoff`` (delays start small again after a stable while)."""
        client = self._require_client()
        labels: LabelSelector = {SERVICE_LABEL: self._config.service}
        listing = client.list(EndpointSlice, namespace=self.namespace, labels=labels)
        slices = {_name(s): slice_targets(s, self._config) async for s in listing}
        version = listing.resourceVersion
        self._changed(slices)
        self.synced.set()
        backoff.succeeded(time.monotonic())
        watch = client.watch(EndpointSlice, namespace=self.namespace, labels=labels, resource_version=version,
                             server_timeout=int(self._config.resync_s))  # fmt: skip
        try:
            async with asyncio.timeout(self._config.resync_s) as timer:
                async for kind, endpoint_slice in watch:
                    if kind == "DELETED":
                        slices.pop(_name(endpoint_slice), None)
                    elif kind in ("ADDED", "MODIFIED"):
                        slices[_name(endpoint_slice)] = slice_targets(endpoint_slice, self._config)
                    self._changed(slices)
        except TimeoutError:
            if not timer.expired():
                raise
            # resync_s passed: the caller lists again

    def _changed(self, slices: dict[str, frozenset[str]]) -> None:
        targets = frozenset().union(*slices.values())
        if targets != self._published:
            self._publish(targets)
            self._published = targets  # after: a publish that raised is tried again on the next list

    def _require_client(self) -> AsyncClient:
        if self._client is None:
            raise RuntimeError("EndpointSliceWatcher.connect() first")
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _name(endpoint_slice: EndpointSlice) -> str:
    metadata = endpoint_slice.metadata
    return (metadata.name if metadata is not None else None) or ""
