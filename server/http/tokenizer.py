"""POST /tokenize and POST /detokenize: the model's tokenizer over HTTP, in vLLM's shapes.

Both run on the model's primary replica (the engine process for ``llamacpp``), behind the same API
keys, body cap and error handling as generation; each is counted in ``lmgate_requests_total`` and
logged with one JSON line like any request (server/metrics.py). Neither takes an admission slot:
tokenizing is cheap and never touches the KV cache.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from lmgate.backends.base import Backend
from lmgate.backends.errors import BackendError
from lmgate.server.errors import InvalidRequestError, from_backend_error
from lmgate.server.http.common import base_request_id, json_body, response_headers
from lmgate.server.http.tokenize_protocol import DetokenizeBody, DetokenizeResponse, TokenizeBody, TokenizeResponse
from lmgate.server.metrics import Metrics
from lmgate.server.placement.registry import ModelRegistry
from lmgate.server.tenancy.http import tenant_of
from lmgate.server.tenancy.scope import check_model

router = APIRouter(tags=["tokenizer"])


def _model(request: Request, model: str | None, endpoint: str, request_id: str) -> str:
    """The requested model; when none is named, the only one served (else a 400 naming ``model``,
    counted and logged here: no model, no tracker)."""
    registry: ModelRegistry = request.app.state.models
    if model is not None:
        return model
    if len(registry.pools) == 1:
        return next(iter(registry.pools))
    error = InvalidRequestError(
        f"model: required when several models are served (here: {', '.join(sorted(registry.pools))})", param="model"
    )
    request.app.state.metrics.rejected("http", endpoint, error, request_id)
    raise error


async def _backend(request: Request, model: str) -> Backend:
    """The model's backend, for a caller whose key may reach it (else 404, as for a missing model)."""
    registry: ModelRegistry = request.app.state.models
    check_model(registry, model, tenant_of(request))
    return (await registry.loaded(model)).primary


@router.post("/tokenize", response_model=TokenizeResponse, dependencies=[Depends(json_body)])
async def tokenize(body: TokenizeBody, request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    request_id = base_request_id(request)
    model = _model(request, body.model, "/tokenize", request_id)
    with metrics.request("http", "/tokenize", model, request_id) as tracker:
        try:
            backend = await _backend(request, model)
            tokenized = await backend.tokenize_request(body.internal())
            out = TokenizeResponse(
                count=len(tokenized.token_ids),
                max_model_len=backend.info.context_length,
                tokens=list(tokenized.token_ids),
                token_strs=list(tokenized.token_strings) if tokenized.token_strings is not None else None,
            )
        except BackendError as exc:
            raise from_backend_error(exc) from exc
        tracker.finish("ok")
    return Response(out.model_dump_json(), media_type="application/json", headers=response_headers(request_id))


@router.post("/detokenize", response_model=DetokenizeResponse, dependencies=[Depends(json_body)])
async def detokenize(body: DetokenizeBody, request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    request_id = base_request_id(request)
    model = _model(request, body.model, "/detokenize", request_id)
    with metrics.request("http", "/detokenize", model, request_id) as tracker:
        try:
            text = await (await _backend(request, model)).detokenize(list(body.tokens))
        except BackendError as exc:
            raise from_backend_error(exc) from exc
        tracker.finish("ok")
    out = DetokenizeResponse(prompt=text)
    return Response(out.model_dump_json(), media_type="application/json", headers=response_headers(request_id))
