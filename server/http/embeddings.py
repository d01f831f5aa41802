"""POST /v1/embeddings: vectors of one or more inputs, as OpenAI's API returns them.

Placed like a generation (server/placement/embedding.py: the model's tasks, fallbacks, quotas,
admission, a replica, the request timeout), behind the same API keys and body cap; counted in
``lmgate_requests_total{endpoint="/v1/embeddings"}`` with its prompt tokens, and logged with one JSON
line (server/metrics.py). A client that disconnects stops the wait; the batch it was in finishes.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from lmgate.backends.embedding import Embeddings, to_base64
from lmgate.backends.types import Usage
from lmgate.server.http.common import base_request_id, json_body, response_headers, until_disconnect
from lmgate.server.http.embeddings_protocol import Embedding, EmbeddingList, EmbeddingsBody, EmbeddingUsage
from lmgate.server.metrics import Metrics
from lmgate.server.placement.embedding import embed
from lmgate.server.tenancy.http import tenant_of

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embeddings", response_model=EmbeddingList, dependencies=[Depends(json_body)])
async def create_embeddings(body: EmbeddingsBody, request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    request_id = base_request_id(request)
    tenant = tenant_of(request)
    with metrics.request("http", "/v1/embeddings", body.model, request_id) as tracker:
        tracker.tenant = tenant.name if tenant is not None else None
        work = embed(request.app.state.dispatcher, body.internal(request_id), tenant, tracker.placed)
        model, result = await until_disconnect(request, work)
        tracker.count(Usage(result.prompt_tokens, 0))
        tracker.finish("ok")
    out = _response(result, model, base64=body.encoding_format == "base64")
    return Response(out.model_dump_json(), media_type="application/json", headers=response_headers(request_id))


def _response(result: Embeddings, model: str, *, base64: bool) -> EmbeddingList:
    data = [
        Embedding(index=i, embedding=to_base64(vector) if base64 else list(vector))
        for i, vector in enumerate(result.vectors)
    ]
    usage = EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    return EmbeddingList(data=data, model=model, usage=usage)
