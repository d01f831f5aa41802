"""Embeddings through the gateway on the fake backend: tasks, dimensions, auth, the settings' rules,
the gRPC conversions, and the value rules shared by both transports."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import openai
import pytest

from lmgate.backends.embedding import MAX_EMBED_INPUTS, inputs_problem, shorten, to_base64
from lmgate.backends.errors import InvalidRequest
from lmgate.backends.grpc import convert
from lmgate.server.settings import ConfigError, validate_settings
from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

from server_helpers import ServerThread


def settings(*models, **server):
    return validate_settings({"server": {"grpc_port": 0, **server}, "models": list(models)})


def fake(name: str, **extra) -> dict:
    return {"name": name, "backend": "fake", **extra}


def test_a_model_refuses_the_task_it_does_not_serve_and_lists_what_it_serves():
    models = fake("chat", tasks=["generate"]), fake("vectors", tasks=["embed"])
    with ServerThread(settings(*models)) as server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as refused:
            client.embeddings.create(model="chat", input="hello")
        assert refused.value.body["param"] == "model" and refused.value.body["code"] == "model_not_supported"
        assert "does not serve embed requests (its tasks: generate)" in refused.value.body["message"]
        with pytest.raises(openai.BadRequestError) as refused:
            client.completions.create(model="vectors", prompt="hello")
        assert "does not serve generate requests" in refused.value.body["message"]
        assert len(client.embeddings.create(model="vectors", input="hello").data[0].embedding) == 16
        cards = {m.id: m.model_extra for m in client.models.list().data}
        assert cards["chat"]["tasks"] == ["generate"] and cards["chat"]["embedding_size"] is None
        assert cards["vectors"]["tasks"] == ["embed"] and cards["vectors"]["embedding_size"] == 16
        with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as err:
            pb_grpc.InferenceStub(channel).Embed(pb.EmbedRequest(model="chat", inputs=[pb.EmbedInput(text="x")]))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_fallback_that_does_not_embed_is_skipped():
    dead = {"name": "remote", "backend": "grpc", "target": "127.0.0.1:1", "connect_timeout_s": 1,
            "fallback": "chat-only"}  # fmt: skip
    models = dead, fake("chat-only", tasks=["generate"], fallback="spare"), fake("spare")
    with ServerThread(settings(*models), wait_ready=False) as server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
        assert client.embeddings.create(model="remote", input="hello").model == "spare"
        assert client.completions.create(model="remote", prompt="hello").model == "chat-only"


def test_dimensions_truncate_and_renormalise_only_where_the_model_allows_it():
    with ServerThread(settings(fake("plain"), fake("matryoshka", embed_truncatable=True))) as server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
        full = np.array(client.embeddings.create(model="matryoshka", input="a b c").data[0].embedding)
        short = np.array(client.embeddings.create(model="matryoshka", input="a b c", dimensions=4).data[0].embedding)
        assert short.shape == (4,) and np.isclose(np.linalg.norm(short), 1.0)
        assert np.allclose(short, full[:4] / np.linalg.norm(full[:4]), atol=1e-6)
        same = client.embeddings.create(model="plain", input="a b c", dimensions=16).data[0].embedding
        assert np.allclose(same, full, atol=1e-6)  # the fake's vectors depend on the input only
        for model, dims in (("plain", 4), ("matryoshka", 17)):
            with pytest.raises(openai.BadRequestError) as refused:
                client.embeddings.create(model=model, input="x", dimensions=dims)
            assert refused.value.body["param"] == "dimensions"


def test_embeddings_need_an_api_key_like_every_route(monkeypatch):
    monkeypatch.setenv("TEST_EMBED_KEYS", "k-one")
    with ServerThread(settings(fake("echo"), api_keys_env="TEST_EMBED_KEYS")) as server:
        body = {"model": "echo", "input": "hi"}
        assert httpx.post(f"{server.base_url}/v1/embeddings", json=body).status_code == 401
        ok = httpx.post(f"{server.base_url}/v1/embeddings", json=body, headers={"Authorization": "Bearer k-one"})
        assert ok.status_code == 200 and ok.json()["usage"] == {"prompt_tokens": 1, "total_tokens": 1}


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"backend": "transformers", "model": "m", "tasks": ["embed"]}, "does not serve embed: its engine generates"),
        ({"backend": "vllm", "model": "m", "tasks": ["generate", "embed"]}, "at most 1 item"),
        ({"gguf": "x.gguf", "tasks": []}, "at least 1 item"),
        ({"gguf": "x.gguf", "tasks": ["embed", "embed"]}, "names a task twice"),
        ({"gguf": "x.gguf", "tasks": ["rerank"]}, "rerank"),
    ],
)
def test_the_tasks_setting_is_checked_against_the_backend_kind(entry, says):
    with pytest.raises(ConfigError, match=says):
        validate_settings({"models": [{"name": "m", **entry}]})


def test_grpc_requests_convert_both_ways_and_bad_ones_name_the_field():
    message = pb.EmbedRequest(model="m", dimensions=8, inputs=[
        pb.EmbedInput(text="hello"), pb.EmbedInput(token_ids=pb.TokenIds(ids=[1, 2, 3])),
    ])  # fmt: skip
    request = convert.embed_from_pb(message, "rid")
    assert request.inputs == ("hello", (1, 2, 3)) and request.dimensions == 8 and request.request_id == "rid"
    assert convert.embed_to_pb(request, "m") == message
    for bad, param in [
        (pb.EmbedRequest(model="m"), "inputs"),
        (pb.EmbedRequest(model="m", inputs=[pb.EmbedInput()]), "inputs.0"),
        (pb.EmbedRequest(model="m", inputs=[pb.EmbedInput(text="")]), "inputs"),
        (pb.EmbedRequest(model="m", inputs=[pb.EmbedInput(text="x")], dimensions=0), "dimensions"),
        (pb.EmbedRequest(inputs=[pb.EmbedInput(text="x")]), "model"),
    ]:
        with pytest.raises(InvalidRequest) as err:
            convert.embed_from_pb(bad, "rid")
        assert err.value.param == param, (bad, err.value.message)


def test_the_value_rules_and_the_vector_helpers():
    assert inputs_problem(()) == "at least one input is required"
    assert "at most 2048" in (inputs_problem(("x",) * (MAX_EMBED_INPUTS + 1)) or "")
    assert inputs_problem(("x", (1, 2))) is None
    vector = (3.0, 4.0, 12.0)
    assert shorten(vector, None) == vector and shorten(vector, 3) == vector
    assert np.allclose(shorten(vector, 2), (0.6, 0.8))
    assert np.frombuffer(__import__("base64").b64decode(to_base64((1.0, -2.5))), "<f4").tolist() == [1.0, -2.5]
