"""Settings of the ``grpc`` backend: another lmgate (a worker) reached over its public gRPC API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat


class GrpcConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["grpc"] = "grpc"
    target: str | list[str] = Field(
        description="host:port of the worker's gRPC server; a list makes one replica per worker.", min_length=1
    )
    remote_model: str | None = Field(default=None, description="The model's name on the worker (default: this name).")
    api_key_env: str | None = Field(
        default=None,
        description="Environment variable holding an API key of the worker (its server.api_keys_env / "
        "api_keys_file), sent as `authorization: Bearer <key>` on every call.",
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
