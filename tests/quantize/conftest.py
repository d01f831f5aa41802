"""The quantize tier (make test-quantize): HF <-> GGUF round trips and llama.cpp quantization on
the shipped tiny-chat model (hidden 256, ffn 768, vocab 1024: every row a multiple of 256, so
llama.cpp's K-quants are used as they are on real models)."""

from __future__ import annotations

import subprocess
import sys

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
def qwen2_model(tmp_path_factory):
    """A random Qwen2 checkpoint with a byte-level BPE tokenizer trained on the project's corpus."""
    from lmgate.quantize.random_hf import build_random_qwen2

    return build_random_qwen2(tmp_path_factory.mktemp("hf") / "qwen2-tiny")


@pytest.fixture(scope="session")
def held_out(tmp_path_factory):
    """Text of the training distribution the model never saw (another seed of the generator)."""
    path = tmp_path_factory.mktemp("text") / "held-out.txt"
    path.write_text(" ".join(plain_text(seed=987, count=120)))
    return path


@pytest.fixture(scope="session")
def calibration():
    from lmgate.quantize.calibration import load_calibration

    return load_calibration("builtin", max_samples=64)


def _quantized(hf_model, tmp_path_factory, method, tool):
    """``lmgate quantize METHOD`` in its own process, as a user runs it (GPTQModel and llm-compressor
    also change torch's process-wide settings, which must not leak into the serving tests)."""
    out = tmp_path_factory.mktemp("quantized") / f"tiny-chat-{tool}-{method}"
    cmd = [sys.executable, "-m", "lmgate.server.cli", "quantize", method, "--from", str(hf_model), "--bits", "4",
           "--group-size", "128", "--calib", "builtin", "--max-samples", "64", "--tool", tool,
           "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {out}" in done.stdout
    return out


@pytest.fixture(scope="session")
def gptq_model(hf_model, tmp_path_factory):
    return _quantized(hf_model, tmp_path_factory, "gptq", "gptqmodel")


@pytest.fixture(scope="session")
def awq_model(hf_model, tmp_path_factory):
    return _quantized(hf_model, tmp_path_factory, "awq", "gptqmodel")


@pytest.fixture(scope="session")
def compressed_model(hf_model, tmp_path_factory):
    """GPTQ by llm-compressor, saved as compressed-tensors (vLLM's native format)."""
    return _quantized(hf_model, tmp_path_factory, "gptq", "llm-compressor")
