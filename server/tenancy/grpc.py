"""gRPC: the key records' interceptor, the counterpart of server/tenancy/http.py.

Every method but the health checks needs ``authorization: Bearer <key>`` metadata naming a key with
a record (UNAUTHENTICATED otherwise), whose ``endpoints`` include ``inference`` for the Inference
service (PERMISSION_DENIED otherwise); reflection only needs a known key. The servicer finds the
tenant again from the same metadata (a digest, cheap) to scope and charge the request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from lmgate.server.errors import AuthenticationError, LmgateError, PermissionDeniedError
from lmgate.server.tenancy.records import Tenants

_INFERENCE = "/lmgate.v1.Inference/"
_DENIED = "Missing or invalid API key: send metadata `authorization: Bearer <key>`."


class TenantInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self, tenants: Tenants, open_prefixes: tuple[str, ...] = ("/grpc.health.v1.Health/",),
        on_denied: Callable[[str, LmgateError], None] | None = None,
    ) -> None:  # fmt: skip
        """``on_denied(method, error)`` is told of each call refused (to count and log it)."""
        self._tenants = tenants
        self._open = open_prefixes
        self._on_denied = on_denied

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(self._open):
            return handler
        tenant = self._tenants.identify(dict(details.invocation_metadata or ()).get("authorization"))
        error: LmgateError | None = None
        if tenant is None:
            error = AuthenticationError(_DENIED)
        elif details.method.startswith(_INFERENCE) and "inference" not in tenant.record.endpoints:
            error = PermissionDeniedError(
                f"API key `{tenant.name}` may not use inference endpoints ({details.method}): its record's "
                f"endpoints are {', '.join(tenant.record.endpoints)}; add `inference` to them"
            )
        if error is None:
            return handler
        if self._on_denied is not None:
            self._on_denied(details.method, error)
        return _refusing(handler, error)


def _refusing(handler: grpc.RpcMethodHandler, error: LmgateError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers ``error``'s status."""
    code = grpc.StatusCode[error.grpc_status]

    async def deny(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, error.message)

    async def deny_stream(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        await context.abort(code, error.message)
        yield  # pragma: no cover - abort raises

    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **serializers)
    return grpc.unary_unary_rpc_method_handler(deny, **serializers)
