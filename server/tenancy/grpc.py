"""gRPC: the key records' interceptor, the counterpart of server/tenancy/http.py.

Every method but the health checks needs ``authorization: Bearer <key>`` metadata naming a key with
a record (UNAUTHENTICATED otherwise), whose ``endpoints`` include ``inference`` for the Inference
service (PERMISSION_DENIED otherwise); reflection only needs a known key. The servicer finds the
tenant again from the same metadata (a digest, cheap) to scope and charge the request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from lmgate.server.errors import AuthenticationError, LmgateError, PermissionDeniedError
from lmgate.server.tenancy.records import Tenants

Req = TypeVar("Req")
Resp = TypeVar("Resp")

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
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Req, Resp] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(self._open):
            return handler
        authorization = dict(details.invocation_metadata or ()).get("authorization")  # bytes only for -bin keys
        tenant = self._tenants.identify(authorization if isinstance(authorization, str) else None)
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


def _refusing(handler: grpc.RpcMethodHandler[Req, Resp], error: LmgateError) -> grpc.RpcMethodHandler[Req, Resp]:
    """A handler of the same shape as ``handler`` that answers ``error``'s status."""
    code = grpc.StatusCode[error.grpc_status]

    async def deny(request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> None:
        await context.abort(code, error.message)

    async def deny_stream(request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> AsyncIterator[None]:
        await context.abort(code, error.message)
        yield  # pragma: no cover - abort raises

    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(deny_stream, deserialize, serialize)
    return grpc.unary_unary_rpc_method_handler(deny, deserialize, serialize)
