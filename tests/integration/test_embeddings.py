"""Embeddings on a real server with the embedded model: the openai SDK, batching, limits, gRPC parity."""

from __future__ import annotations

import concurrent.futures
import re

import grpc
import httpx
import numpy as np
import openai
import pytest

from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

from conftest import MODEL

# From the model's training corpus (quantize/tinychat/corpus.py): each pair says one thing two ways.
PARAPHRASES = [
    ("What does a cat say?", "What sound does a cat make?"),
    ("What color is the sky?", "Tell me the color of the sky."),
    ("A cow lives on a farm.", "A cow lives on a farm, it says moo."),
]
UNRELATED = ["What is seven plus two?", "Who are you?", "A little duck came to look at it.",
             "The capital of Spain is Madrid.", "A spider has eight legs."]  # fmt: skip
SIZE = 256  # tiny-chat's hidden size


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        yield client


def vectors(client, inputs, **params):
    response = client.embeddings.create(model=MODEL, input=inputs, **params)
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([d.embedding for d in response.data])


def test_the_sdk_gets_unit_vectors_as_floats_and_as_base64_alike(client, http):
    texts = ["The cat sat on the mat.", "Hello world"]
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    decoded = vectors(client, texts)  # the SDK asks for base64 by default and decodes it
    as_floats = np.array([d.embedding for d in floats.data])
    assert as_floats.shape == (2, SIZE) and np.allclose(np.linalg.norm(as_floats, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(as_floats.astype(np.float32), decoded.astype(np.float32))
    counts = [http.post("/tokenize", json={"model": MODEL, "prompt": t}).json()["count"] for t in texts]
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == sum(counts)
    assert floats.model == MODEL and floats.object == "list" and floats.data[0].object == "embedding"


def test_token_ids_embed_as_the_text_they_tokenize_to(client, http):
    text = "A dog likes to eat meat."
    ids = http.post("/tokenize", json={"model": MODEL, "prompt": text}).json()["tokens"]
    from_text, from_ids, from_lists = vectors(client, text), vectors(client, ids), vectors(client, [ids, ids])
    assert np.allclose(from_text[0], from_ids[0], atol=1e-6) and np.allclose(from_lists, from_ids[0], atol=1e-6)


def test_an_input_gets_the_same_vector_alone_in_a_big_batch_and_beside_chat_requests(client):
    target = "What does a horse eat?"
    alone = vectors(client, target)[0]
    # 40 inputs of different lengths: several engine batches (embed_max_seqs 16), target in the middle.
    batch = [f"{'A little bird sang. ' * (i % 7)}Story number {i}." for i in range(40)]
    batch[23] = target
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        chats = [pool.submit(client.chat.completions.create, model=MODEL, max_tokens=24,
                             messages=[{"role": "user", "content": f"What does a {a} say?"}])
                 for a in ("cat", "dog", "cow", "duck")]  # fmt: skip
        in_batch = pool.submit(vectors, client, batch)
        beside = pool.submit(vectors, client, [target, "Who are you?"])
        assert all(c.result().choices[0].message.content for c in chats)
        assert np.allclose(in_batch.result()[23], alone, atol=1e-5)
        assert np.allclose(beside.result()[0], alone, atol=1e-5)


def test_paraphrases_are_closer_than_unrelated_sentences(client):
    unrelated = vectors(client, UNRELATED)
    for a, b in PARAPHRASES:
        va, vb = vectors(client, [a, b])
        nearest_unrelated = max((unrelated @ va).max(), (unrelated @ vb).max())
        assert va @ vb > nearest_unrelated, (a, b, va @ vb, nearest_unrelated)


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"input": []}, "input", "at least one input"),
        ({"input": ""}, "input", "input 0 is empty"),
        ({"input": ["ok", ""]}, "input", "input 1 is empty"),
        ({"input": [[1, 2], []]}, "input", "input 1 is empty"),
        ({"input": ["x"] * 2049}, "input", "at most 2048 inputs"),
        ({"input": [1, 5_000_000]}, "input", "outside the vocabulary"),
        ({"input": [-1]}, "input", "negative token id (-1)"),
        ({"input": [[5, 2**40]]}, "input", "token id out of range"),
        ({"input": "word " * 3000}, "input", "maximum context length of 2048"),
        ({"input": [[1] * 2049]}, "input", "maximum context length of 2048"),
        ({"input": "x", "dimensions": 64}, "dimensions", "only its own size, 256"),
        ({"input": "x", "dimensions": 0}, "dimensions", "greater than or equal to 1"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", "float"),
        ({"input": "x", "pooling": "max"}, None, "Unrecognized request argument supplied: pooling"),
        ({"input": "x", "model": "nope"}, "model", "nope"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(http, body, param, says):
    response = http.post("/v1/embeddings", json={"model": MODEL} | body)
    assert response.status_code == (404 if param == "model" else 400), response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error


def test_the_model_lists_its_tasks_and_embedding_size(client, server):
    card = client.models.retrieve(MODEL).model_extra
    assert card["tasks"] == ["generate", "embed"] and card["embedding_size"] == SIZE
    with grpc.insecure_channel(server.grpc_target) as channel:
        models = pb_grpc.InferenceStub(channel).ListModels(pb.ListModelsRequest()).models
    assert list(models[0].tasks) == ["generate", "embed"]


def test_grpc_embed_gives_the_vectors_http_gives(client, server):
    texts = ["What does a cat say?", "The sky is blue."]
    over_http = vectors(client, texts, encoding_format="float")
    inputs = [pb.EmbedInput(text=texts[0]), pb.EmbedInput(text=texts[1])]
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        response = stub.Embed(pb.EmbedRequest(model=MODEL, inputs=inputs))
        with pytest.raises(grpc.RpcError) as refused:
            stub.Embed(pb.EmbedRequest(model=MODEL, inputs=[pb.EmbedInput(token_ids=pb.TokenIds(ids=[9_999_999]))]))
    assert response.model == MODEL and [e.index for e in response.embeddings] == [0, 1]
    assert np.allclose(np.array([list(e.values) for e in response.embeddings]), over_http, atol=1e-6)
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens == 0
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert dict(refused.value.trailing_metadata())["lmgate-error-param"] == "input"


def test_requests_are_counted_under_their_endpoint(client, http):
    vectors(client, "counted")
    text = http.get("/metrics").text
    counted = re.search(r'lmgate_requests_total\{[^}]*endpoint="/v1/embeddings"[^}]*status="ok"[^}]*\} (\S+)', text)
    assert counted is not None and float(counted.group(1)) >= 1
