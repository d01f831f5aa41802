"""A generation route's request, measured from its start: its tracker, its tenant."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fastapi import Request

from lmgate.server.http.protocol import _Request
from lmgate.server.metrics import Metrics, RequestTracker
from lmgate.server.tenancy.http import tenant_of
from lmgate.server.tenancy.records import Tenant


@contextlib.contextmanager
def tracked(
    request: Request, endpoint: str, body: _Request, request_id: str
) -> Iterator[tuple[RequestTracker, Tenant | None]]:
    """The request's tracker (``Metrics.request``: an error raised inside is counted) with its tenant
    and the fields it sent without effect, and the tenant (None without key records)."""
    metrics: Metrics = request.app.state.metrics
    tenant = tenant_of(request)
    with metrics.request("http", endpoint, body.model, request_id) as tracker:
        tracker.tenant = tenant.name if tenant is not None else None
        tracker.ignored_fields = body.ignored_fields
        yield tracker, tenant
