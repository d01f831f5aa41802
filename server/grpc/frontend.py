"""The gRPC server: ``lmgate.v1.Inference``, health and reflection, on the HTTP server's loop.

Started and stopped in the app's lifespan (server/app.py). Health reports the server and each
model by name, as they become able to serve or stop.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lmgate.server.errors import InvalidRequestError
from lmgate.server.grpc.registration import add_inference_service
from lmgate.server.grpc.servicer import SERVICE, InferenceServicer
from lmgate.server.metrics import Metrics
from lmgate.server.placement.dispatch import Dispatcher
from lmgate.server.placement.registry import ModelRegistry
from lmgate.server.tenancy.records import Tenants

log = logging.getLogger(__name__)

_AGE_GRACE_MS = 3_600_000
_SERVER_OPTIONS = [
    # Without SO_REUSEPORT a second server on a taken port fails to start instead of sharing it.
    ("grpc.so_reuseport", 0),
    # Gateways in front of this server ping it (backends/grpc) to notice when it freezes: accept
    # pings down to once a second, with or without calls, instead of answering them with GOAWAY.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
]


class GrpcFrontend:
    """The grpc.aio server with Inference, health and reflection; started in the app's lifespan."""

    def __init__(self, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, port: int) -> None:
        self.server = server
        self.health = health_servicer
        self.port = port
        self._reported: dict[str, int] = {}

    @classmethod
    async def start(
        cls, registry: ModelRegistry, dispatcher: Dispatcher, metrics: Metrics, host: str, port: int,
        interceptors: tuple[grpc.aio.ServerInterceptor, ...] = (), max_connection_age_s: float | None = None,
        tenants: Tenants | None = None, credentials: grpc.ServerCredentials | None = None,
    ) -> GrpcFrontend:  # fmt: skip
        """Serve on ``host:port`` (over TLS with ``credentials``); ``max_connection_age_s`` makes clients
        reconnect that often (see settings)."""
        options = list(_SERVER_OPTIONS)
        if max_connection_age_s is not None:
            # GOAWAY after the age; calls in flight get the grace to finish (a long generation included).
            options += [("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
                        ("grpc.max_connection_age_grace_ms", _AGE_GRACE_MS)]  # fmt: skip
        server = grpc.aio.server(interceptors=interceptors, options=options)

        def refused(method: str, message: str) -> None:
            metrics.rejected("grpc", method, InvalidRequestError(message))

        add_inference_service(InferenceServicer(registry, dispatcher, metrics, tenants), server, refused)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        try:
            address = f"{host}:{port}"
            bound = (
                server.add_insecure_port(address)
                if credentials is None
                else server.add_secure_port(address, credentials)
            )
        except RuntimeError:
            where = f"{host}:{port}"
            raise OSError(f"cannot serve gRPC on {where}: the port is in use (server.grpc_port, --grpc-port)") from None
        await server.start()
        frontend = cls(server, health_servicer, bound)
        await frontend.report(registry)
        log.info("gRPC serving %s on %s:%d", SERVICE, host, bound)
        return frontend

    async def report(self, registry: ModelRegistry) -> None:
        """Health: overall and the service SERVING while every model can serve; each model by name.
        Only changes are sent (Watch streams see each transition once)."""
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        overall = serving if registry.ready else not_serving
        statuses = {"": overall, SERVICE: overall}
        statuses |= {name: serving if pool.healthy() else not_serving for name, pool in registry.pools.items()}
        for service, status in statuses.items():
            if self._reported.get(service) != status:
                await self.health.set(service, status)
                self._reported[service] = status

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
