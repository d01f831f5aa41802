"""The HTTP application: OpenAI routes, health probes, and OpenAI-shaped errors for everything;
its lifespan also runs the gRPC server (server/grpc/servicer.py) on the same event loop.

``create_app(settings)`` builds a fresh app with its own model registry (no module state). Models
load in the background after start-up: GET /health answers at once, GET /ready is 503 until every
model is loaded and while one cannot serve (its engine process is restarting). When no model can
ever load (every one failed for a reason retrying cannot fix) ``on_fatal`` is called with the reason:
the CLI exits non-zero with it rather than idling with /health 200; so does a gRPC port that cannot be
bound. Otherwise ``on_ready`` is called once the eager models have loaded (the CLI's banner).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmgate.server.auth import ApiKeys, GateInterceptor
from lmgate.server.errors import ClientDisconnected, LmgateError, from_validation_errors
from lmgate.server.grpc.frontend import GrpcFrontend
from lmgate.server.grpc.servicer import grpc_endpoints
from lmgate.server.grpc.tls import server_credentials
from lmgate.server.http import chat, completions, embeddings, models, responses, tokenizer
from lmgate.server.http.gate import GatewayMiddleware
from lmgate.server.http.responses_store import ResponseStore
from lmgate.server.metrics import CONTENT_TYPE, Metrics, start_http_server
from lmgate.server.placement.dispatch import Dispatcher
from lmgate.server.placement.drain import Drain
from lmgate.server.placement.registry import ModelRegistry
from lmgate.server.settings import ConfigError, Settings
from lmgate.server.tenancy.grpc import tenant_check
from lmgate.server.tenancy.http import TenantMiddleware
from lmgate.server.tenancy.records import Tenants

log = logging.getLogger(__name__)


HEALTH_REPORT_INTERVAL_S = 0.5


def create_app(
    settings: Settings, on_fatal: Callable[[str], None] | None = None, on_ready: Callable[[], None] | None = None
) -> FastAPI:
    """The app; ConfigError when the configured API keys cannot be read. ``on_fatal`` and ``on_ready`` are
    called on the event loop, at most once each and never both."""
    registry = ModelRegistry(settings.models)
    drain = Drain(registry, settings.server.drain_timeout_s)
    dispatcher = Dispatcher(registry, drain)
    metrics = Metrics(registry, log_prompts=settings.server.log_prompts)
    keys = ApiKeys.from_settings(settings.server)
    tenants = Tenants.from_settings(settings.server)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server = settings.server
        grpc = None
        if server.grpc_port is not None:
            check = keys.grpc_check if keys is not None else tenant_check(tenants) if tenants is not None else None
            interceptors: tuple[GateInterceptor, ...] = ()
            if check is not None:
                interceptors = (GateInterceptor(check, on_denied=lambda m, e: metrics.rejected("grpc", m, e)),)
            try:
                grpc = app.state.grpc = await GrpcFrontend.start(
                    registry, dispatcher, metrics, server.host, server.grpc_port, interceptors,
                    server.grpc_max_connection_age_s, tenants, server_credentials(server),
                )  # fmt: skip
            except (OSError, ConfigError) as exc:
                if on_fatal is None:
                    raise
                # Not raised: uvicorn would log the lifespan's traceback. The CLI checks the port before
                # starting; this is the race where another process took it since.
                on_fatal(str(exc))
                yield
                return
            drain.on_begin.append(grpc.health.enter_graceful_shutdown)
        metrics_server = None
        if server.metrics_port is not None:
            metrics_server, _ = start_http_server(server.metrics_port, server.host, registry=metrics.registry)

        async def load() -> None:
            await registry.start()
            reason = registry.cannot_serve()
            if reason is not None:
                log.error("no model can be served: %s", reason)
                if on_fatal is not None:
                    on_fatal(reason)
            elif on_ready is not None:
                on_ready()
            # gRPC health follows each model as engines die and come back (HTTP /ready reads it live).
            while grpc is not None:
                await grpc.report(registry)
                await asyncio.sleep(HEALTH_REPORT_INTERVAL_S)

        loading = asyncio.create_task(load())
        reloading = tenants is not None and reload_on_sighup(tenants)
        try:
            yield
        finally:
            if reloading:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            # Draining happened before (server/placement/drain.py, on SIGTERM): what still runs is cut now.
            if grpc is not None:
                await grpc.stop(grace=1.0)
            await registry.shutdown()
            if metrics_server is not None:
                metrics_server.shutdown()

    app = FastAPI(title="lmgate", summary="OpenAI-compatible LLM serving gateway", lifespan=lifespan)
    app.state.models = registry
    app.state.dispatcher = dispatcher
    app.state.drain = drain
    app.state.settings = settings
    app.state.grpc = None
    app.state.metrics = metrics
    app.state.tenants = tenants
    app.state.responses = ResponseStore(settings.server.responses_store_max, settings.server.responses_store_ttl_s)
    routers = [m.router for m in (chat, completions, embeddings, models, responses, tokenizer)]
    for router in routers:
        app.include_router(router)
    _add_probes(app, registry, metrics, drain)
    routes = [*app.routes, *(route for router in routers for route in router.routes)]
    paths = {path for path in (getattr(route, "path", None) for route in routes) if path and "{" not in path}
    metrics.endpoints = frozenset(paths) | grpc_endpoints()
    _add_error_handlers(app, metrics)
    open_paths = {"/health", "/ready"} | ({"/metrics"} if not settings.server.metrics_auth else set())
    app.add_middleware(
        GatewayMiddleware,
        keys=keys,
        open_paths=frozenset(open_paths),
        max_body_bytes=settings.server.max_body_bytes,
        body_timeout_s=settings.server.body_timeout_s,
        metrics=metrics,
    )
    if tenants is not None:  # added last: outermost, the key is checked before the body is read
        app.add_middleware(TenantMiddleware, tenants=tenants, open_paths=frozenset(open_paths), metrics=metrics)
    return app


def reload_on_sighup(tenants: Tenants) -> bool:
    """Re-read the key records on SIGHUP (connections and requests in flight are untouched); False
    where signals cannot be handled here (a server running off the main thread, as in tests)."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, tenants.reload)
    except (ValueError, RuntimeError, NotImplementedError):
        return False
    return True


def _add_probes(app: FastAPI, registry: ModelRegistry, metrics: Metrics, drain: Drain) -> None:
    @app.get("/health", tags=["probes"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["probes"])
    async def prometheus() -> Response:
        """Prometheus metrics (server/metrics.py)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/ready", tags=["probes"])
    async def ready() -> JSONResponse:
        """Readiness: 200 once every eager model is loaded (lazy ones load on demand) and the server
        is not draining, else 503; the body gives each model's state."""
        ready = registry.ready and not drain.draining
        body = {"ready": ready, "draining": drain.draining, "models": registry.states}
        return JSONResponse(body, status_code=200 if ready else 503)


def _add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(LmgateError)
    async def lmgate_error(_: Request, exc: LmgateError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
        return JSONResponse(exc.body(), status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = from_validation_errors(exc.errors())
        named = exc.body.get("model") if isinstance(exc.body, dict) else None
        metrics.rejected("http", request.url.path, error, model=named)  # refused before any route: counted here
        return JSONResponse(error.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = LmgateError(str(exc.detail), code=str(exc.status_code))
        body = error.body()
        body["error"]["type"] = "invalid_request_error" if exc.status_code < 500 else "internal_error"
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ClientDisconnected)
    async def client_gone(_: Request, exc: ClientDisconnected) -> JSONResponse:
        return JSONResponse({"error": {"message": "client disconnected"}}, status_code=499)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(LmgateError("internal server error").body(), status_code=500)
