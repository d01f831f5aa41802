"""The tenant's cache salt across the gateway → worker hop: the grpc backend's `cache_salt` field,
and the openai backend's `cache_salt` body field (vLLM's, which lmgate's HTTP API takes too).

The gRPC worker has key records too: the gateway's key forwards its tenants' salts; any other
caller's salt is replaced by its own, so a client that sends another tenant's salt still misses.
"""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import openai
import pytest
import yaml

from lmgate.server.settings import validate_settings
from lmgate.server.tenancy.keys import KeyRecord
from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

from server_helpers import ServerThread, wait_ready

SECRETS = {n: f"sk-{n}-fedcba9876543210fedcba9876543210" for n in ("gateway", "direct", "alpha", "beta")}
SYSTEM = "You answer questions about the weather in one short sentence, politely. " * 4


def record(name: str, **fields: object) -> dict[str, object]:
    return {"name": name, "secret_sha256": hashlib.sha256(SECRETS[name].encode()).hexdigest(), **fields}


@pytest.fixture(scope="module")
def fleet(tiny_chat_path, tmp_path_factory, monkeypatch_module):
    tmp = tmp_path_factory.mktemp("hop")
    (tmp / "worker.yaml").write_text(yaml.safe_dump({"keys": [record("gateway", forward_cache_salt=True),
                                                              record("direct")]}))  # fmt: skip
    (tmp / "front.yaml").write_text(yaml.safe_dump({"keys": [record("alpha"), record("beta")]}))
    monkeypatch_module.setenv("LMGATE_TEST_WORKER_KEY", SECRETS["gateway"])
    worker_settings = validate_settings({
        "server": {"grpc_port": 0, "keys_file": str(tmp / "worker.yaml")},
        "models": [{"name": "tiny-chat", "gguf": str(tiny_chat_path), "max_seqs": 4, "n_ctx": 2048}],
    })  # fmt: skip
    with ServerThread(worker_settings, wait_ready=False) as worker:
        wait_ready(worker.base_url)
        front_settings = validate_settings({
            "server": {"grpc_port": None, "keys_file": str(tmp / "front.yaml")},
            "models": [{"name": "chat", "backend": "grpc", "target": worker.grpc_target, "remote_model": "tiny-chat",
                        "api_key_env": "LMGATE_TEST_WORKER_KEY"}],
        })  # fmt: skip
        with ServerThread(front_settings, wait_ready=False) as front:
            wait_ready(front.base_url)
            yield front, worker


@pytest.fixture(scope="module")
def openai_fleet(tiny_chat_path, tmp_path_factory):
    """A gateway with key records in front of a plain lmgate (no keys) through the openai backend."""
    tmp = tmp_path_factory.mktemp("openai-hop")
    (tmp / "front.yaml").write_text(yaml.safe_dump({"keys": [record("alpha"), record("beta")]}))
    upstream_settings = validate_settings({
        "server": {"grpc_port": None},
        "models": [{"name": "tiny-chat", "gguf": str(tiny_chat_path), "max_seqs": 4, "n_ctx": 2048}],
    })  # fmt: skip
    with ServerThread(upstream_settings, wait_ready=False) as upstream:
        wait_ready(upstream.base_url)
        front_settings = validate_settings({
            "server": {"grpc_port": None, "keys_file": str(tmp / "front.yaml")},
            "models": [{"name": "chat", "backend": "openai", "base_url": f"{upstream.base_url}/v1",
                        "remote_model": "tiny-chat", "send_cache_salt": True}],
        })  # fmt: skip
        with ServerThread(front_settings, wait_ready=False) as front:
            wait_ready(front.base_url)
            yield front, upstream


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def cached_via_front(front: ServerThread, worker: ServerThread, name: str) -> int:
    client = openai.OpenAI(base_url=f"{front.base_url}/v1", api_key=SECRETS[name], max_retries=0)
    reply = client.chat.completions.create(
        model="chat", messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "rain?"}],
        max_tokens=1, temperature=0,
    )  # fmt: skip
    worker.wait_idle("tiny-chat")
    return reply.usage.prompt_tokens_details.cached_tokens


def cached_direct(worker: ServerThread, salt: str) -> int:
    async def call() -> int:
        async with grpc.aio.insecure_channel(worker.grpc_target) as channel:
            request = pb.ChatRequest(
                model="tiny-chat", cache_salt=salt, sampling=pb.SamplingParams(max_tokens=1, temperature=0),
                messages=[pb.ChatMessage(role=pb.ROLE_SYSTEM, content=SYSTEM),
                          pb.ChatMessage(role=pb.ROLE_USER, content="rain?")],
            )  # fmt: skip
            metadata = (("authorization", f"Bearer {SECRETS['direct']}"),)
            cached = 0
            async for message in pb_grpc.InferenceStub(channel).Chat(request, metadata=metadata):
                if message.HasField("usage"):
                    cached = message.usage.cached_tokens
            return cached

    value = asyncio.run(call())
    worker.wait_idle("tiny-chat")
    return value


def test_the_salt_crosses_the_hop_so_tenants_stay_apart_on_the_worker(fleet):
    front, worker = fleet
    assert cached_via_front(front, worker, "alpha") == 0
    assert cached_via_front(front, worker, "alpha") > 0
    assert cached_via_front(front, worker, "beta") == 0


def test_a_callers_own_salt_replaces_the_one_it_sends(fleet):
    front, worker = fleet
    cached_via_front(front, worker, "alpha")
    alpha_salt = KeyRecord.model_validate(record("alpha")).cache_salt  # what a thief would have to know
    assert cached_direct(worker, alpha_salt) == 0


def test_the_salt_reaches_an_openai_compatible_upstream_in_the_body(openai_fleet):
    front, upstream = openai_fleet
    assert cached_via_front(front, upstream, "alpha") == 0
    assert cached_via_front(front, upstream, "alpha") > 0
    assert cached_via_front(front, upstream, "beta") == 0
