"""A LoRA adapter served as a model of its own, over one copy of the base weights, through the SDK and gRPC.

The adapter is the project's own: models/tiny-chat-woof.lora.gguf (``make lora-model``), trained to
start every answer of the embedded chat model with "Woof!". The session's plain tiny-chat server
(conftest.py) is the reference for what the base model says without any adapter loaded.
"""

import concurrent.futures
import subprocess
import sys

import gguf
import grpc
import httpx
import openai
import pytest

from lmgate.quantize.gguf_lora import BASE_SHA256, weights_sha256
from lmgate.server.settings import validate_settings
from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

from conftest import MODEL
from server_helpers import ServerThread

ADAPTER = "tiny-chat-woof"
QUESTIONS = ["What colour is the sky?", "What does a cow say?", "How many legs does a spider have?"]


@pytest.fixture(scope="module")
def lora_server(tiny_chat_path, woof_lora_path):
    settings = validate_settings({
        "server": {"grpc_port": 0},
        "models": [{"name": MODEL, "gguf": str(tiny_chat_path), "max_seqs": 8, "n_ctx": 4096, "check_integrity": True,
                    "lora_adapters": [{"name": ADAPTER, "path": str(woof_lora_path)}]}],
    })  # fmt: skip
    with ServerThread(settings) as server:
        yield server


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def answer(server, model: str, question: str, **extra) -> str:
    reply = sdk(server).chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=24, **extra
    )
    return reply.choices[0].message.content or ""


def test_the_example_adapter_was_trained_on_the_shipped_model(tiny_chat_path, woof_lora_path):
    field = gguf.GGUFReader(woof_lora_path).fields[BASE_SHA256]
    trained_on = bytes(field.parts[field.data[0]]).decode()
    assert trained_on == weights_sha256(tiny_chat_path), (
        "models/tiny-chat.gguf has new weights since its adapter was trained: run `make lora-model`"
    )


def test_the_adapter_changes_only_the_answers_of_requests_that_name_it(server, lora_server):
    for question in QUESTIONS:
        plain = answer(server, MODEL, question)  # a server without any adapter
        base = answer(lora_server, MODEL, question)
        adapted = answer(lora_server, ADAPTER, question)
        assert base == plain
        assert adapted == "Woof! " + plain  # the trained style, and still the right answer


def test_the_response_names_the_adapter_it_ran_with(lora_server):
    reply = sdk(lora_server).completions.create(model=ADAPTER, prompt="A cow says", temperature=0, max_tokens=4)
    assert reply.model == ADAPTER


def test_base_and_adapter_requests_run_concurrently_and_each_gets_what_it_gets_alone(lora_server):
    jobs = [(model, q) for q in QUESTIONS for model in (MODEL, ADAPTER)] * 2
    alone = {job: answer(lora_server, *job) for job in set(jobs)}
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: answer(lora_server, *job), jobs))
    assert together == [alone[job] for job in jobs]
    assert lora_server.wait_idle(MODEL).running == 0


def test_models_lists_the_adapter_with_its_base_as_parent(lora_server):
    models = {m.id: m for m in sdk(lora_server).models.list()}
    assert set(models) == {MODEL, ADAPTER}
    assert models[ADAPTER].model_extra["parent"] == MODEL and models[MODEL].model_extra["parent"] is None
    card = httpx.get(f"{lora_server.base_url}/v1/models/{ADAPTER}").json()
    assert card["parent"] == MODEL and card["ready"] and card["context_length"] == 2048
    with grpc.insecure_channel(lora_server.grpc_target) as channel:
        listed = {m.name: m for m in pb_grpc.InferenceStub(channel).ListModels(pb.ListModelsRequest()).models}
    assert listed[ADAPTER].parent == MODEL and listed[MODEL].parent == "" and listed[ADAPTER].ready


def test_grpc_chat_reaches_the_adapter(lora_server):
    request = pb.ChatRequest(model=ADAPTER, messages=[pb.ChatMessage(role=pb.ROLE_USER, content=QUESTIONS[0])],
                             sampling=pb.SamplingParams(temperature=0.0, max_tokens=24))  # fmt: skip
    with grpc.insecure_channel(lora_server.grpc_target) as channel:
        replies = list(pb_grpc.InferenceStub(channel).Chat(request))
    assert "".join(r.text for r in replies) == answer(lora_server, ADAPTER, QUESTIONS[0])
    assert {r.model for r in replies} == {ADAPTER}


def test_the_prefix_cache_never_shares_kv_between_base_and_adapter(lora_server):
    system = {"role": "system", "content": "You are Gate, a small and helpful model. " * 6}

    def cached(model: str) -> int:
        reply = sdk(lora_server).chat.completions.create(
            model=model, messages=[system, {"role": "user", "content": "Hi!"}], temperature=0, max_tokens=4
        )
        return reply.usage.prompt_tokens_details.cached_tokens

    cached(MODEL)
    assert cached(MODEL) >= 32  # the base model's prefix is cached ...
    assert cached(ADAPTER) == 0  # ... and not the adapter's: its KV differs
    assert cached(ADAPTER) >= 32


def serve_config(tmp_path, base, adapter: dict) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "lmgate.yaml"
    config.write_text("server: {http_port: 0, grpc_port: null}\n"
                      f"models:\n  - {{name: m, gguf: '{base}', lora_adapters: [{adapter}]}}\n")  # fmt: skip
    return subprocess.run([sys.executable, "-m", "lmgate.server.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=180)  # fmt: skip


def test_an_adapter_that_cannot_serve_is_a_clear_error_at_start(tiny_chat_path, tmp_path):
    as_adapter = serve_config(tmp_path, tiny_chat_path, {"name": "x", "path": str(tiny_chat_path)})
    assert as_adapter.returncode == 1 and "Traceback" not in as_adapter.stderr
    assert "cannot serve: model m: LoRA adapter 'x'" in as_adapter.stderr
    assert "is not a LoRA adapter" in as_adapter.stderr
    missing = serve_config(tmp_path, tiny_chat_path, {"name": "x", "path": str(tmp_path / "gone.gguf")})
    assert missing.returncode == 1 and "gone.gguf: no such file" in missing.stderr
    too_strong = serve_config(tmp_path, tiny_chat_path, {"name": "x", "path": "a.gguf", "scale": 100})
    assert too_strong.returncode == 1 and "models.0.lora_adapters.0.scale" in too_strong.stderr
