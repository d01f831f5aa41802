"""Which endpoints of a Service's EndpointSlices become replicas, and the discovery settings."""

import pytest
from lightkube.resources.discovery_v1 import EndpointSlice
from pydantic import ValidationError

from lmgate.backends.grpc.discovery_config import KubernetesDiscovery
from lmgate.backends.grpc.kubernetes import slice_targets
from lmgate.server.settings import Settings


def endpoint_slice(
    endpoints, ports=({"name": "grpc", "port": 50051}, {"name": "http", "port": 8000}), address_type="IPv4"
):
    return EndpointSlice.from_dict({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": address_type,
        "metadata": {"name": "workers-abc", "labels": {"kubernetes.io/service-name": "workers"}},
        "ports": list(ports), "endpoints": endpoints,
    })  # fmt: skip


def test_ready_endpoints_on_the_named_port_are_the_targets():
    slice_ = endpoint_slice([
        {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
        {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
        {"addresses": ["10.0.0.3"], "conditions": {"ready": True, "terminating": True}},
        {"addresses": ["10.0.0.4"]},  # no conditions: the API says to take it as ready
        {"addresses": ["10.0.0.5", "10.0.0.6"], "conditions": {"ready": True}},  # the first address only
    ])  # fmt: skip
    assert slice_targets(slice_, KubernetesDiscovery(service="workers")) == {
        "10.0.0.1:50051",
        "10.0.0.4:50051",
        "10.0.0.5:50051",
    }
    assert slice_targets(slice_, KubernetesDiscovery(service="workers", port=8000)) == {
        "10.0.0.1:8000",
        "10.0.0.4:8000",
        "10.0.0.5:8000",
    }
    assert slice_targets(slice_, KubernetesDiscovery(service="workers", port="metrics")) == frozenset()


def test_ipv6_addresses_are_bracketed():
    slice_ = endpoint_slice([{"addresses": ["fd00::7"], "conditions": {"ready": True}}], address_type="IPv6")
    assert slice_targets(slice_, KubernetesDiscovery(service="workers")) == {"[fd00::7]:50051"}


def grpc_model(**entry):
    return Settings.model_validate({"models": [{"name": "chat", "backend": "grpc", **entry}]})


def test_a_grpc_model_names_its_workers_by_target_or_by_discovery_exactly_once():
    grpc_model(discovery={"kubernetes": {"service": "workers"}})
    grpc_model(target="w:50051")
    with pytest.raises(ValidationError, match="exactly one"):
        grpc_model()
    with pytest.raises(ValidationError, match="exactly one"):
        grpc_model(target="w:50051", discovery={"kubernetes": {"service": "workers"}})
    with pytest.raises(ValidationError, match="service"):
        grpc_model(discovery={"kubernetes": {"service": "Not_A_Service"}})


def test_a_set_of_replicas_the_pool_failed_to_take_is_published_again():
    from lmgate.backends.grpc.kubernetes import EndpointSliceWatcher

    published, failures = [], [RuntimeError("the pool could not take it")]

    def publish(targets):
        if failures:
            raise failures.pop()
        published.append(targets)

    watcher = EndpointSliceWatcher("m", KubernetesDiscovery(service="workers", port="grpc"), publish)
    slices = {"workers-abc": frozenset({"10.0.0.1:50051"})}
    with pytest.raises(RuntimeError):
        watcher._changed(slices)
    watcher._changed(slices)  # the next list brings the same set: it must reach the pool this time
    watcher._changed(slices)  # and once it has, the same set again is no change
    assert published == [frozenset({"10.0.0.1:50051"})]
