"""GET /v1/models and /v1/models/{model}."""

from __future__ import annotations

from fastapi import APIRouter, Request

from lmgate.server.model_registry import ModelRegistry, ModelState
from lmgate.server.protocol import ModelCard, ModelList

router = APIRouter()


def _card(registry: ModelRegistry, name: str) -> ModelCard:
    info = registry.backends[name].info
    return ModelCard(
        id=name,
        created=registry.created[name],
        backend=info.backend,
        context_length=info.context_length,
        quantization=info.quantization,
        aliases=registry.aliases(name),
    )


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    registry: ModelRegistry = request.app.state.models
    return ModelList(data=[_card(registry, n) for n, s in registry.states.items() if s is ModelState.READY])


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, request: Request) -> ModelCard:
    registry: ModelRegistry = request.app.state.models
    registry.get(model)
    return _card(registry, registry.resolve(model))
