"""Embeddings through a gateway: the grpc backend (a worker lmgate) and the openai backend (any
OpenAI-compatible upstream, here an lmgate too) give the vectors the upstream gives."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from lmgate.server.settings import validate_settings

from server_helpers import ServerThread

TEXTS = ["What does a cat say?", "The sky is blue."]


@pytest.fixture(scope="module")
def fleet(tiny_chat_path):
    worker = validate_settings({"server": {"grpc_port": 0}, "models": [{"name": "tiny", "gguf": str(tiny_chat_path)}]})
    with ServerThread(worker) as up:
        front = validate_settings({"server": {"grpc_port": 0}, "models": [
            {"name": "via-grpc", "backend": "grpc", "target": up.grpc_target, "remote_model": "tiny"},
            {"name": "via-openai", "backend": "openai", "base_url": f"{up.base_url}/v1", "remote_model": "tiny"},
        ]})  # fmt: skip
        with ServerThread(front) as gateway:
            yield up, gateway


def embed(server, model, inputs, **params):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=120)
    return client.embeddings.create(model=model, input=inputs, **params)


@pytest.mark.parametrize("model", ["via-grpc", "via-openai"])
def test_a_forwarded_request_gets_the_upstreams_vectors_and_usage(fleet, model):
    up, gateway = fleet
    direct, via = embed(up, "tiny", TEXTS), embed(gateway, model, TEXTS)
    assert via.model == model and via.usage.prompt_tokens == direct.usage.prompt_tokens
    assert np.allclose([d.embedding for d in via.data], [d.embedding for d in direct.data], atol=1e-6)


@pytest.mark.parametrize(
    ("inputs", "params", "param"), [("x", {"dimensions": 8}, "dimensions"), ([[10**7]], {}, "input")]
)
def test_the_workers_refusal_keeps_its_field(fleet, inputs, params, param):
    _, gateway = fleet
    with pytest.raises(openai.BadRequestError) as refused:
        embed(gateway, "via-grpc", inputs, **params)
    assert refused.value.body["param"] == param, refused.value.body
