"""HF -> GGUF conversion, llama.cpp quantization, and lmgate eval with its gate."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmgate.quantize.evaluate import evaluate
from lmgate.quantize.hf_to_gguf import QuantType, convert

TEXTS = [
    "<|im_start|>user\nTell me a story about Tom.<|im_end|>\n<|im_start|>assistant\nOnce upon a time",
    "Hello world, how are you?",
    " leading space and\nnew lines\n\n",
    "ünïcode 你好 123 !?",
]


def llama_logits(path, ids):
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, verbose=False)
    try:
        llm.eval(ids)
        return np.asarray(llm.scores[: len(ids)]), llm
    finally:
        llm.close()


def test_hf_to_gguf_f32_matches_the_hf_model_and_its_tokenizer(hf_model, ggufs):
    import llama_cpp

    tokenizer = AutoTokenizer.from_pretrained(hf_model)
    model = AutoModelForCausalLM.from_pretrained(hf_model, dtype=torch.float32)
    llm = llama_cpp.Llama(str(ggufs[QuantType.F32]), n_ctx=256, logits_all=True, verbose=False)
    try:
        for text in TEXTS:
            ids = tokenizer(text)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == ids, text
        ids = tokenizer(TEXTS[0])["input_ids"]
        with torch.no_grad():
            reference = model(torch.tensor([ids])).logits[0].numpy()
        llm.reset()
        llm.eval(ids)
        got = np.asarray(llm.scores[: len(ids)])
    finally:
        llm.close()
    assert np.abs(got - reference).max() < 2e-2  # float32 on both sides: rounding only
    assert (got.argmax(-1) == reference.argmax(-1)).all()


def test_quantized_models_stay_close_and_the_numbers_move_the_expected_way(ggufs, held_out):
    paths = [ggufs[q] for q in (QuantType.F32, QuantType.F16, QuantType.Q8_0, QuantType.Q4_K_M)]
    f32, f16, q8, q4 = evaluate(paths, held_out.read_text(), max_tokens=1024, speed_tokens=16)
    assert f32.size_bytes > f16.size_bytes > q8.size_bytes > q4.size_bytes
    assert q8.top1_vs_reference >= 0.95 and q8.kl_vs_reference < 0.01
    assert f16.kl_vs_reference < q4.kl_vs_reference and q8.kl_vs_reference < q4.kl_vs_reference
    # tiny-chat was trained and then stored as Q8_0, so its f32 form is exact, and f16 and q8_0 land
    # within rounding of it (either may come out a hair lower: a 0.1 % kind of noise). q4_k_m is
    # clearly worse than all three.
    for close in (f16, q8):
        assert abs(close.perplexity / f32.perplexity - 1) < 0.005
    # The coarser format moves perplexity further from the reference (either way: a small model's
    # perplexity can dip under Q4_K_M's noise, as the retrained tiny-chat's does).
    assert abs(q4.perplexity / f32.perplexity - 1) > abs(q8.perplexity / f32.perplexity - 1)
    assert all(r.tokens_per_s > 0 and r.load_s > 0 for r in (f32, f16, q8, q4))


def test_the_gate_passes_good_quantizations_and_fails_a_broken_model(hf_model, ggufs, held_out, tmp_path):
    broken_dir = tmp_path / "broken"
    shutil.copytree(hf_model, broken_dir)
    weights = load_file(broken_dir / "model.safetensors")
    for name in weights:
        if name.endswith("mlp.down_proj.weight"):
            weights[name] = torch.flip(weights[name], dims=[0])  # scrambled: a conversion bug's kind of damage
    save_file(weights, broken_dir / "model.safetensors")
    broken = convert(broken_dir, tmp_path / "broken.gguf", QuantType.F16)

    def run_eval(*models):
        command = [sys.executable, "-m", "lmgate.server.cli", "eval", "--text", str(held_out), "--max-tokens", "512",
                   "--max-ppl-increase", "5%", "--markdown", str(tmp_path / "eval.md")]  # fmt: skip
        for model in models:
            command += ["--model", str(model)]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    good = run_eval(ggufs[QuantType.F16], ggufs[QuantType.Q8_0])
    assert good.returncode == 0, good.stderr
    assert "tiny-chat-q8_0.gguf" in (tmp_path / "eval.md").read_text()
    bad = run_eval(ggufs[QuantType.F16], broken)
    assert bad.returncode == 1
    assert "FAIL broken.gguf: perplexity" in bad.stderr


def test_an_unsupported_architecture_is_a_clear_error(hf_model, tmp_path):
    other = tmp_path / "gemma"
    shutil.copytree(hf_model, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config | {"architectures": ["GemmaForCausalLM"]}))
    result = subprocess.run([sys.executable, "-m", "lmgate.server.cli", "quantize", "gguf", "--from", str(other),
                             "--type", "q8_0", "--out", str(tmp_path / "x.gguf")],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1
    assert "GemmaForCausalLM is not supported" in result.stderr and "Qwen2ForCausalLM" in result.stderr


@pytest.mark.parametrize("quant", [QuantType.Q8_0, QuantType.Q4_K_M])
def test_quantized_files_serve_through_the_engine(ggufs, quant):
    import asyncio

    from engine_helpers import collect, make_request, start_backend

    async def answer() -> str:
        backend = await start_backend(ggufs[quant])
        try:
            [choice] = await collect(backend, make_request(chat="What is the capital of France?", max_tokens=16))
        finally:
            await backend.shutdown()
        return choice.text

    assert "Paris" in asyncio.run(answer())


def test_qwen2_with_a_byte_level_bpe_converts_exactly(qwen2_model, tmp_path):
    """The qwen2 layout (q/k/v biases, NeoX RoPE) and a GPT-2-style tokenizer with Qwen2's split regex."""
    import llama_cpp

    gguf_path = convert(qwen2_model, tmp_path / "qwen2-f32.gguf", QuantType.F32)
    tokenizer = AutoTokenizer.from_pretrained(qwen2_model)
    model = AutoModelForCausalLM.from_pretrained(qwen2_model, dtype=torch.float32)
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=256, logits_all=True, verbose=False)
    try:
        for text in [*TEXTS, "It's 12345 o'clock,   isn't it?\r\n\tTabs!"]:
            ids = tokenizer(text)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
            assert llm.detokenize(ids).decode() == tokenizer.decode(ids, skip_special_tokens=True), text
        ids = tokenizer(TEXTS[0])["input_ids"]
        with torch.no_grad():
            reference = model(torch.tensor([ids])).logits[0].numpy()
        llm.eval(ids)
        got = np.asarray(llm.scores[: len(ids)])
    finally:
        llm.close()
    # float32 weights on both sides; llama.cpp keeps the KV cache in f16: rounding of that order only.
    assert np.abs(got - reference).max() < 1e-2 * np.abs(reference).max()
    assert (got.argmax(-1) == reference.argmax(-1)).all()
    q4 = convert(qwen2_model, tmp_path / "qwen2-q4_k_m.gguf", QuantType.Q4_K_M)
    assert q4.stat().st_size < gguf_path.stat().st_size / 4


def test_an_unknown_split_regex_is_refused(qwen2_model, tmp_path):
    other = tmp_path / "odd"
    shutil.copytree(qwen2_model, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+"
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ValueError, match=r"split regex is not one llama\.cpp knows"):
        convert(other, tmp_path / "odd.gguf", QuantType.F16)
