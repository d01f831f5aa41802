"""Embeddings on vLLM's pooling runner (a model entry with ``tasks: [embed]``), on its CPU build."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from lmgate.server.settings import validate_settings

from server_helpers import ServerThread


@pytest.fixture(scope="module")
def embedder(hf_model):
    settings = validate_settings({
        "server": {"grpc_port": None},
        "models": [{"name": "tiny-embed", "backend": "vllm", "model": str(hf_model), "dtype": "float32",
                    "enforce_eager": True, "max_model_len": 512, "kv_cache_memory_bytes": 64 * 2**20,
                    "tasks": ["embed"]}],
    })  # fmt: skip
    with ServerThread(settings) as server:
        yield openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=300)


def test_the_pooling_runner_gives_unit_vectors_the_same_alone_or_batched(embedder):
    texts = ["What does a cat say?", "A cow lives on a farm.", "The sky is blue."]
    batched = embedder.embeddings.create(model="tiny-embed", input=texts)
    vectors = np.array([d.embedding for d in batched.data])
    assert vectors.shape == (3, 256) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    alone = embedder.embeddings.create(model="tiny-embed", input=texts[1]).data[0].embedding
    assert np.allclose(alone, vectors[1], atol=1e-4)
    assert batched.usage.prompt_tokens > 3
    [card] = embedder.models.list().data
    assert card.model_extra["tasks"] == ["embed"] and card.model_extra["embedding_size"] == 256
    with pytest.raises(openai.BadRequestError) as refused:
        embedder.chat.completions.create(model="tiny-embed", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["code"] == "model_not_supported"
