"""Settings of the ``grpc`` backend: another lmgate (a worker) reached over its public gRPC API."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, PositiveFloat, model_validator

from lmgate.backends.grpc.discovery_config import GrpcDiscovery
from lmgate.backends.tasks import TasksConfig


class GrpcConfig(TasksConfig):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["grpc"] = "grpc"
    target: str | list[str] | None = Field(
        default=None,
        description="host:port of the worker's gRPC server; a list makes one replica per worker (or `discovery`).",
        min_length=1,
    )
    discovery: GrpcDiscovery | None = Field(
        default=None,
        description="Find the workers at runtime instead of `target`: one replica per ready endpoint of a "
        "Kubernetes Service, added and removed as pods come and go (docs/deploy.md).",
    )
    remote_model: str | None = Field(default=None, description="The model's name on the worker (default: this name).")
    api_key_env: str | None = Field(
        default=None,
        description="Environment variable holding an API key of the worker (its server.api_keys_env / "
        "api_keys_file), sent as `authorization: Bearer <key>` on every call.",
    )
    api_key_file: Path | None = Field(
        default=None,
        description="A file holding that API key instead (a mounted Kubernetes Secret); relative to the config file's.",
    )
    tls_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle that signed the worker's certificate: connect over TLS and check the worker "
        "(none: plaintext, for workers on the same node or a trusted network).",
    )
    tls_cert_file: Path | None = Field(
        default=None, description="PEM client certificate (chain) for workers that require mutual TLS."
    )
    tls_key_file: Path | None = Field(default=None, description="Its private key (PEM).")
    tls_server_name: str | None = Field(
        default=None,
        description="The name the worker's certificate is checked against, when it is not the target's host "
        "(a target given as an IP address, a Service name the certificate does not carry).",
    )
    connect_timeout_s: PositiveFloat = Field(default=60.0, description="How long start() waits for the worker.")
    health_interval_s: PositiveFloat = Field(
        default=2.0, description="How often the worker's health is checked (grpc.health.v1 Check for this model)."
    )
    health_timeout_s: PositiveFloat = Field(
        default=2.0,
        description="A health check unanswered this long marks the worker unhealthy (frozen, overloaded, gone): "
        "no request is routed to it until a check passes again.",
    )
    keepalive_s: PositiveFloat = Field(
        default=10.0, description="HTTP/2 keepalive ping interval on the connection to the worker."
    )
    keepalive_timeout_s: PositiveFloat = Field(
        default=5.0,
        description="A ping unanswered this long closes the connection: streams from a frozen worker end with "
        "an error instead of hanging.",
    )
    load_balancing: Literal["pick_first", "round_robin"] = Field(
        default="pick_first",
        description="gRPC's own balancing over the addresses a target resolves to: with a Kubernetes headless "
        "Service (`dns:///workers:50051`) and round_robin, calls spread over every worker pod as it comes and goes.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> GrpcConfig:
        if (self.target is None) == (self.discovery is None):
            raise ValueError("give the workers by `target` or by `discovery`, exactly one of them")
        if self.api_key_env is not None and self.api_key_file is not None:
            raise ValueError("give the worker's API key by api_key_env or by api_key_file, not both")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together (a client certificate and its key)")
        if self.tls_ca_file is None and (self.tls_cert_file is not None or self.tls_server_name is not None):
            raise ValueError("tls_cert_file / tls_server_name need tls_ca_file (TLS to the worker)")
        return self
