"""GET /v1/models and /v1/models/{model}."""

from __future__ import annotations

from fastapi import APIRouter, Request

from lmgate.backends.tasks import Task
from lmgate.server.http.protocol import ModelCard, ModelList
from lmgate.server.placement.pool import ModelPool, ModelState
from lmgate.server.placement.registry import ModelRegistry
from lmgate.server.tenancy.http import tenant_of
from lmgate.server.tenancy.scope import check_model, visible, visible_adapters

router = APIRouter()


def _card(pool: ModelPool, adapter: str | None = None) -> ModelCard:
    """A base model's card, or (``adapter``) a LoRA adapter's: its base in ``parent``, no aliases."""
    card = ModelCard(
        id=adapter or pool.name, created=pool.created, backend=pool.backend_kind,
        aliases=list(pool.settings.aliases) if adapter is None else [], ready=pool.healthy(),
        replicas=len(pool.replicas), parent=pool.name if adapter is not None else None,
        tasks=[str(t) for t in pool.settings.tasks] if adapter is None else [str(Task.GENERATE)],
    )  # fmt: skip
    if pool.healthy():
        info, capabilities = pool.primary.info, pool.primary.capabilities
        card.context_length = info.context_length
        card.quantization = info.quantization
        card.supported_params = sorted(capabilities.sampling_params)
        card.tools = capabilities.tools
        card.tool_format = info.tool_format
        if pool.settings.serves(Task.EMBED) and adapter is None:
            card.embedding_size = info.embedding_size
    return card


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    """Models that serve now, and lazy ones that load at their first request; each LoRA adapter after its
    base model, with the base in ``parent``."""
    registry: ModelRegistry = request.app.state.models
    tenant = tenant_of(request)
    listed = [p for p in visible(registry, tenant) if _listed(p)]
    adapters = [(p, a) for p, a in visible_adapters(registry, tenant) if _listed(p)]
    return ModelList(data=[_card(p) for p in listed] + [_card(p, a) for p, a in adapters])


def _listed(pool: ModelPool) -> bool:
    return pool.healthy() or pool.state is ModelState.UNLOADED


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, request: Request) -> ModelCard:
    registry: ModelRegistry = request.app.state.models
    check_model(registry, model, tenant_of(request))
    return _card(registry.pool(model), registry.adapter_of(model))
