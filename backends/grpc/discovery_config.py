"""Settings of a ``grpc`` model's replica discovery: the workers behind a Kubernetes Service.

Pure settings (no Kubernetes client import): the watcher is backends/grpc/kubernetes.py.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

_DNS_LABEL = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
_PORT_NAME = r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$"


class KubernetesDiscovery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str = Field(
        pattern=_DNS_LABEL,
        description="The workers' Service: its EndpointSlices (label kubernetes.io/service-name) are watched, and "
        "every ready endpoint address is one replica.",
    )
    namespace: str | None = Field(
        default=None,
        pattern=_DNS_LABEL,
        description="The Service's namespace (default: the gateway pod's own, from its service account; outside "
        "a cluster, the kubeconfig context's, else `default`).",
    )
    port: str | int = Field(
        default="grpc",
        description="The Service port the workers' gRPC API is on: its name (as in the Service's `ports`) or its "
        "number (the endpoints' port, i.e. the container port).",
    )
    resync_s: float = Field(
        default=300.0,
        gt=0,
        description="Every this long the slices are listed again and the watch restarted, whatever happened: a "
        "watch that silently stopped delivering (a broken connection nobody closed) cannot go stale for longer.",
    )

    def port_matches(self, name: str | None, number: int | None) -> bool:
        """Whether a slice's port (its ``name`` and ``port`` number) is the one configured."""
        if isinstance(self.port, int):
            return number == self.port
        return name == self.port


class GrpcDiscovery(BaseModel):
    """Where a ``grpc`` model finds its workers at runtime instead of a fixed ``target`` (one kind today)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kubernetes: KubernetesDiscovery = Field(
        description="Watch a Service's EndpointSlices (needs get/list/watch on endpointslices in "
        "discovery.k8s.io: deploy/k8s/base/rbac.yaml, and `pip install lmgate[kubernetes]`)."
    )
