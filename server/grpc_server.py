"""The public gRPC API (``lmgate.v1.Inference``), health and reflection, on the HTTP server's loop.

A thin servicer: each request is validated by the HTTP API's own models (server/grpc_convert.py),
run through the same backend streams, and errors leave as the status code their class names
(server/errors.py) — mapped in one place, ``_rpc_errors``. A cancelled call or a passed deadline
cancels the handler, which closes the backend stream and so aborts the sequences.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lmgate.backends.errors import BackendError
from lmgate.backends.types import GenerateRequest, TokenDelta
from lmgate.server import convert, grpc_convert
from lmgate.server.convert import UsageTally
from lmgate.server.dispatch import Dispatcher
from lmgate.server.errors import InvalidRequestError, LmgateError, from_backend_error
from lmgate.server.grpc_registration import add_inference_service
from lmgate.server.metrics import Metrics
from lmgate.server.model_registry import ModelRegistry
from lmgate.server.tenant_scope import check_model, visible
from lmgate.server.tenants import Tenant, Tenants
from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["Inference"].full_name
REQUEST_ID_KEY = "x-request-id"
IGNORED_PARAMS_KEY = "x-lmgate-ignored-params"


MAX_DETAILS_CHARS = 2000
"""Status details travel in trailers, which clients cap (8 KB by default): a longer one would turn
into RESOURCE_EXHAUSTED on the client, hiding the error."""


@contextlib.asynccontextmanager
async def _rpc_errors(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """The one place errors become gRPC status codes."""
    try:
        yield
    except LmgateError as exc:
        if exc.retry_after_s is not None:
            context.set_trailing_metadata((("retry-after", str(exc.retry_after_s)),))
        await context.abort(grpc.StatusCode[exc.grpc_status], exc.message[:MAX_DETAILS_CHARS])
    except BackendError as exc:
        error = from_backend_error(exc)
        await context.abort(grpc.StatusCode[error.grpc_status], error.message[:MAX_DETAILS_CHARS])


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(
        self, registry: ModelRegistry, dispatcher: Dispatcher, metrics: Metrics, tenants: Tenants | None = None
    ) -> None:
        self._registry = registry
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._tenants = tenants

    def _tenant(self, context: grpc.aio.ServicerContext) -> Tenant | None:
        """The caller's key record (the interceptor let only known keys in), None without records."""
        if self._tenants is None:
            return None
        return self._tenants.identify(dict(context.invocation_metadata() or ()).get("authorization"))

    async def Chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ChatResponse]:
        async for fields in self._generate(request, context, "Chat", _chat_requests):
            yield pb.ChatResponse(**fields)

    async def Complete(
        self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CompleteResponse]:
        async for fields in self._generate(request, context, "Complete", _complete_requests):
            yield pb.CompleteResponse(**fields)

    async def _generate(
        self,
        request: pb.ChatRequest | pb.CompleteRequest,
        context: grpc.aio.ServicerContext,
        method: str,
        to_internal: Callable[[Any, str], tuple[int, list[GenerateRequest]]],
    ) -> AsyncIterator[dict[str, Any]]:
        """Both streaming rpcs: validate as HTTP does, dispatch, measure, stream the fields."""
        request_id = _request_id(context)
        async with _rpc_errors(context):
            tenant = self._tenant(context)
            with self._metrics.request("grpc", f"/{SERVICE}/{method}", request.model, request_id) as tracker:
                tracker.tenant = tenant.name if tenant is not None else None
                n, requests = to_internal(request, request_id)
                dispatched = await self._dispatcher.open(request.model, requests, tenant)
                stream = tracker.watch(dispatched.streams[0], n)
                # Closed however the call ends, a cancel before the first message included.
                async with contextlib.aclosing(stream):  # type: ignore[type-var]
                    await context.send_initial_metadata(_metadata(request_id, dispatched.ignored_params))
                    async for fields in _responses(stream, request_id, dispatched.pool.name, n):
                        yield fields

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        models = []
        for pool in visible(self._registry, self._tenant(context)):
            name = pool.name
            model = pb.Model(name=name, aliases=pool.settings.aliases, backend=pool.backend_kind, ready=pool.healthy())
            if pool.healthy():
                info, capabilities = pool.primary.info, pool.primary.capabilities
                model.context_length = info.context_length
                model.quantization = info.quantization or ""
                model.supported_params.extend(sorted(capabilities.sampling_params))
            models.append(model)
        return pb.ListModelsResponse(models=models)

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        async with _rpc_errors(context):
            check_model(self._registry, request.model, self._tenant(context))
            backend = (await self._registry.loaded(request.model)).primary
            add_special = request.add_special if request.HasField("add_special") else True
            return pb.TokenizeResponse(token_ids=await backend.tokenize(request.text, add_special=add_special))
        raise AssertionError("unreachable: _rpc_errors aborts")

    async def Detokenize(
        self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetokenizeResponse:
        async with _rpc_errors(context):
            check_model(self._registry, request.model, self._tenant(context))
            backend = (await self._registry.loaded(request.model)).primary
            return pb.DetokenizeResponse(text=await backend.detokenize(list(request.token_ids)))
        raise AssertionError("unreachable: _rpc_errors aborts")


def _chat_requests(request: pb.ChatRequest, request_id: str) -> tuple[int, list[GenerateRequest]]:
    body = grpc_convert.chat_request(request)
    return body.n, [convert.chat_request(body, request_id)]


def _complete_requests(request: pb.CompleteRequest, request_id: str) -> tuple[int, list[GenerateRequest]]:
    body = grpc_convert.complete_request(request)
    return body.n, convert.completion_requests(body, request_id)


def _metadata(request_id: str, ignored_params: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    if ignored_params:
        return ((REQUEST_ID_KEY, request_id), (IGNORED_PARAMS_KEY, ",".join(ignored_params)))
    return ((REQUEST_ID_KEY, request_id),)


async def _responses(
    stream: AsyncIterator[TokenDelta], request_id: str, model: str, n: int
) -> AsyncIterator[dict[str, Any]]:
    """Fields of each stream message: one per delta with news, then the usage."""
    usage = UsageTally(n)
    try:
        async for delta in stream:
            usage.add(delta)
            if delta.text or delta.logprobs or delta.finish_reason is not None:
                yield {"id": request_id, "model": model, **grpc_convert.delta_fields(delta)}
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    yield {"id": request_id, "model": model, "usage": grpc_convert.usage_pb(usage.out())}


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
        tenants: Tenants | None = None,
    ) -> GrpcFrontend:  # fmt: skip
        """Serve on ``host:port``; ``max_connection_age_s`` makes clients reconnect that often (see settings)."""
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
            bound = server.add_insecure_port(f"{host}:{port}")
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
