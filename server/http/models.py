"""GET /v1/models and /v1/models/{model}."""

from __future__ import annotations

from fastapi import APIRouter, Request

from lmgate.backends.tasks import Task
from lmgate.server.http.protocol import ModelCard, ModelList
from lmgate.server.placement.registry import ModelPool, ModelRegistry, ModelState
from lmgate.server.tenancy.http import tenant_of
from lmgate.server.tenancy.scope import check_model, visible

router = APIRouter()


def _card(pool: ModelPool) -> ModelCard:
    card = ModelCard(
        id=pool.name, created=pool.created, backend=pool.backend_kind, aliases=list(pool.settings.aliases),
        ready=pool.healthy(), replicas=len(pool.replicas), tasks=[str(t) for t in pool.settings.tasks],
    )  # fmt: skip
    if pool.healthy():
        info, capabilities = pool.primary.info, pool.primary.capabilities
        card.context_length = info.context_length
        card.quantization = info.quantization
        card.supported_params = sorted(capabilities.sampling_params)
        card.tools = capabilities.tools
        card.tool_format = info.tool_format
        if pool.settings.serves(Task.EMBED):
            card.embedding_size = info.embedding_size
    return card


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    """Models that serve now, and lazy ones that load at their first request."""
    registry: ModelRegistry = request.app.state.models
    listed = [p for p in visible(registry, tenant_of(request)) if p.healthy() or p.state is ModelState.UNLOADED]
    return ModelList(data=[_card(p) for p in listed])


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, request: Request) -> ModelCard:
    registry: ModelRegistry = request.app.state.models
    check_model(registry, model, tenant_of(request))
    return _card(registry.pool(model))
