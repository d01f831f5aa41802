"""The quantize tier (make test-quantize): HF <-> GGUF round trips and llama.cpp quantization on
the shipped tiny-chat model (hidden 256, ffn 768, vocab 1024: every row a multiple of 256, so
llama.cpp's K-quants are used as they are on real models)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="the quantize tier runs in its own venv: make test-quantize")
pytest.importorskip("transformers", reason="the quantize tier runs in its own venv: make test-quantize")

from lmgate.quantize.gguf_to_hf import convert as gguf_to_hf
from lmgate.quantize.hf_to_gguf import QuantType, convert
from lmgate.quantize.tinychat.corpus import plain_text


@pytest.fixture(scope="session")
def hf_model(tiny_chat_path, tmp_path_factory):
    return gguf_to_hf(tiny_chat_path, tmp_path_factory.mktemp("hf") / "tiny-chat")


@pytest.fixture(scope="session")
def ggufs(hf_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    return {q: convert(hf_model, out / f"tiny-chat-{q.value}.gguf", q) for q in
            (QuantType.F32, QuantType.F16, QuantType.Q8_0, QuantType.Q4_K_M)}  # fmt: skip


@pytest.fixture(scope="session")
def held_out(tmp_path_factory):
    """Text of the training distribution the model never saw (another seed of the generator)."""
    path = tmp_path_factory.mktemp("text") / "held-out.txt"
    path.write_text(" ".join(plain_text(seed=987, count=120)))
    return path
