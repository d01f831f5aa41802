"""HTTP: who a request's API key is, when keys are records (server/tenancy/records.py).

A pure ASGI middleware in front of the gateway's own (server/gate_middleware.py): a missing or
unknown key is a 401, a key not allowed the endpoint's group (``inference``, ``metrics``,
``admin``) a 403, both OpenAI-shaped; otherwise the tenant rides in the ASGI scope for the routes
(``tenant_of``). Open paths (probes, /metrics unless ``metrics_auth``) need no key.
"""

from __future__ import annotations

from fastapi import Request

from lmgate.server.errors import AuthenticationError, LmgateError, PermissionDeniedError
from lmgate.server.http.gate import ASGIApp, Receive, Scope, Send, _respond
from lmgate.server.metrics import Metrics
from lmgate.server.tenancy.records import Tenant, Tenants, endpoint_of

SCOPE_KEY = "lmgate.tenant"


class TenantMiddleware:
    def __init__(self, app: ASGIApp, *, tenants: Tenants, open_paths: frozenset[str], metrics: Metrics) -> None:
        self.app = app
        self.tenants = tenants
        self.open_paths = open_paths
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        tenant = self.tenants.identify(given)
        error: LmgateError | None = None
        if tenant is None:
            error = AuthenticationError()
        elif endpoint_of(scope["path"]) not in tenant.record.endpoints:
            group = endpoint_of(scope["path"])
            error = PermissionDeniedError(
                f"API key `{tenant.name}` may not use {group} endpoints ({scope['path'][:100]}): its record's "
                f"endpoints are {', '.join(tenant.record.endpoints)}; add `{group}` to them"
            )
        if error is not None:
            self.metrics.rejected("http", scope["path"], error)
            await _respond(send, error, {"www-authenticate": "Bearer"} if tenant is None else None)
            return
        scope[SCOPE_KEY] = tenant
        await self.app(scope, receive, send)


def tenant_of(request: Request) -> Tenant | None:
    """The tenant the middleware found for ``request``; None without key records."""
    return request.scope.get(SCOPE_KEY)
