"""gRPC: the key records' interceptor, the counterpart of server/tenancy/http.py.

Every method but the health checks needs ``authorization: Bearer <key>`` metadata naming a key with
a record (UNAUTHENTICATED otherwise), whose ``endpoints`` include ``inference`` for the Inference
service (PERMISSION_DENIED otherwise); reflection only needs a known key. The interceptor itself is
``server/auth.GateInterceptor``, shared with plain keys. The servicer finds the
tenant again from the same metadata (a digest, cheap) to scope and charge the request.
"""

from __future__ import annotations

from lmgate.server.auth import GRPC_DENIED, GrpcCheck
from lmgate.server.errors import AuthenticationError, LmgateError, PermissionDeniedError
from lmgate.server.tenancy.records import Tenants

_INFERENCE = "/lmgate.v1.Inference/"


def tenant_check(tenants: Tenants) -> GrpcCheck:
    """The ``GateInterceptor`` check of key records: a known key, and ``inference`` among its
    endpoints for the Inference service."""

    def check(authorization: str | None, method: str) -> LmgateError | None:
        tenant = tenants.identify(authorization)
        if tenant is None:
            return AuthenticationError(GRPC_DENIED)
        if method.startswith(_INFERENCE) and "inference" not in tenant.record.endpoints:
            return PermissionDeniedError(
                f"API key `{tenant.name}` may not use inference endpoints ({method}): its record's "
                f"endpoints are {', '.join(tenant.record.endpoints)}; add `inference` to them"
            )
        return None

    return check
