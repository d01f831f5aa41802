"""The vLLM tier: the shipped tiny-chat model converted to HF, on vLLM's CPU build (make test-vllm).

One server (session-scoped: vLLM's engine takes ~17 s to start) serves the model twice: on vLLM
and on the llama.cpp engine, so the two engines can be compared on the same weights.
"""

from __future__ import annotations

import os

import pytest

vllm = pytest.importorskip("vllm", reason="the vLLM tier runs in its own venv: make test-vllm")

from lmgate.quantize.gguf_to_hf import convert  # noqa: E402
from lmgate.server.settings import validate_settings  # noqa: E402

from server_helpers import ServerThread  # noqa: E402

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


@pytest.fixture(scope="session")
def hf_model(tiny_chat_path, tmp_path_factory):
    return convert(tiny_chat_path, tmp_path_factory.mktemp("hf") / "tiny-chat")


@pytest.fixture(scope="session")
def server(hf_model, tiny_chat_path):
    settings = validate_settings({
        "server": {"grpc_port": 0},
        "models": [
            {"name": "tiny-vllm", "backend": "vllm", "model": str(hf_model), "dtype": "float32", "enforce_eager": True,
             "max_model_len": 512, "kv_cache_memory_bytes": 64 * 2**20, "params": "strict"},
            {"name": "tiny-llamacpp", "gguf": str(tiny_chat_path)},
        ],
    })  # fmt: skip
    with ServerThread(settings) as server:
        yield server
