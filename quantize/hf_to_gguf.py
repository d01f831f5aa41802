"""An HF checkpoint of the Llama family to GGUF, then quantized by llama.cpp (``lmgate quantize gguf``).

- Architectures: ``LlamaForCausalLM`` and ``MistralForCausalLM`` (llama.cpp's ``llama``: q/k rows
  permuted into its pairwise RoPE order, as llama.cpp's own converter does). Others fail with a
  message naming what is supported.
- Tokenizers: SentencePiece-style BPE (``▁`` for spaces, byte fallback: Llama 2, Mistral) from
  tokenizer.json, written as llama.cpp's ``llama`` vocabulary with each merged piece scored by its
  merge rank (SentencePiece BPE and rank-ordered BPE tokenize alike). Byte-level BPE (GPT-2 style)
  is refused for now, with a message that says so.
- The chat template comes along (tokenizer_config.json or chat_template.jinja).
- Weights are written as F32 or F16; every other type is made by ``llama_model_quantize`` from
  the F16 (or F32) file, so K-quants are llama.cpp's own.

Reading safetensors in bf16 needs torch (the ``quantize`` tier has it); f32/f16 checkpoints need
only numpy.
"""

from __future__ import annotations

import enum
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lmgate.quantize.gguf_llama import LlamaShape, SpmVocab, WeightType, write_llama_gguf

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


class QuantType(enum.StrEnum):
    """Output types of ``lmgate quantize gguf`` (llama.cpp's names)."""

    F32 = "f32"
    F16 = "f16"
    Q8_0 = "q8_0"
    Q6_K = "q6_k"
    Q5_K_M = "q5_k_m"
    Q4_K_M = "q4_k_m"


_FTYPES = {  # llama_ftype values (llama.h)
    QuantType.Q8_0: 7,
    QuantType.Q6_K: 18,
    QuantType.Q5_K_M: 17,
    QuantType.Q4_K_M: 15,
}
_HF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


class UnsupportedModel(ValueError):
    """The checkpoint is not one this converter handles; the message says what is."""


def permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """HF's half-split RoPE rows into llama.cpp's pairwise order (as convert_hf_to_gguf does)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def convert(source: Path, out: Path, quant: QuantType = QuantType.F16) -> Path:
    """Write ``source`` (an HF directory) as a GGUF of type ``quant`` to ``out``."""
    config = json.loads((source / "config.json").read_text())
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise UnsupportedModel(f"{source}: architecture {arch} is not supported; supported: {supported}")
    shape = _shape(config)
    tensors = dict(_tensors(source, shape, tie=bool(config.get("tie_word_embeddings", False))))
    vocab, template = _vocab(source, config, shape.vocab_size)
    base = WeightType.F32 if quant is QuantType.F32 else WeightType.F16
    out.parent.mkdir(parents=True, exist_ok=True)
    if quant in (QuantType.F32, QuantType.F16):
        write_llama_gguf(out, shape, tensors, vocab, name=source.name, weight_type=base, chat_template=template)
        return out
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        full = Path(tmp) / "f16.gguf"
        write_llama_gguf(full, shape, tensors, vocab, name=source.name, weight_type=base, chat_template=template)
        quantize_gguf(full, out, quant)
    return out


def quantize_gguf(source: Path, out: Path, quant: QuantType) -> None:
    """llama.cpp's ``llama_model_quantize`` from an F16/F32 GGUF."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _FTYPES[quant]
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {quant.value}")


def _shape(config: dict) -> LlamaShape:
    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    if config.get("head_dim", hidden // heads) != hidden // heads:
        raise UnsupportedModel("head_dim different from hidden_size / num_attention_heads is not supported")
    return LlamaShape(
        vocab_size=config["vocab_size"],
        hidden=hidden,
        layers=config["num_hidden_layers"],
        heads=heads,
        kv_heads=config.get("num_key_value_heads", heads),
        ffn=config["intermediate_size"],
        context_length=config.get("max_position_embeddings", 2048),
        rope_theta=float(config.get("rope_theta", 10000.0)),
        rms_eps=float(config.get("rms_norm_eps", 1e-5)),
    )


def _tensors(source: Path, shape: LlamaShape, *, tie: bool) -> Iterator[tuple[str, np.ndarray]]:
    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise UnsupportedModel(f"{source} has no *.safetensors weights")
    weights = {name: data for path in files for name, data in _read_safetensors(path)}
    if tie and "lm_head.weight" not in weights:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    for name, data in weights.items():
        yield from _rename(name, data, shape)


def _read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield name, f.get_tensor(name).astype(np.float32)
    except TypeError:  # bf16: numpy has no such dtype, torch does
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118
                yield name, f.get_tensor(name).float().numpy()


def _rename(name: str, data: np.ndarray, shape: LlamaShape) -> Iterator[tuple[str, np.ndarray]]:
    if name == "model.embed_tokens.weight":
        yield "token_embd.weight", data
    elif name == "lm_head.weight":
        yield "output.weight", data
    elif name == "model.norm.weight":
        yield "output_norm.weight", data
    elif name.startswith("model.layers."):
        _, _, layer, rest = name.split(".", 3)
        kind = _HF_NAMES.get(rest.removesuffix(".weight"))
        if kind is None or not rest.endswith(".weight"):
            raise UnsupportedModel(f"unexpected tensor {name} for a Llama layout")
        if kind == "attn_q":
            data = permute(data, shape.heads)
        elif kind == "attn_k":
            data = permute(data, shape.kv_heads)
        yield f"blk.{layer}.{kind}.weight", data
    elif not name.endswith("rotary_emb.inv_freq"):
        raise UnsupportedModel(f"unexpected tensor {name} for a Llama layout")


def _vocab(source: Path, config: dict, vocab_size: int) -> tuple[SpmVocab, str | None]:
    import gguf

    tokenizer = json.loads((source / "tokenizer.json").read_text())
    config_path = source / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text()) if config_path.exists() else {}
    model = tokenizer["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise UnsupportedModel("only SentencePiece-style BPE tokenizers (byte fallback, ▁ for spaces) convert "
                               "today; byte-level BPE (GPT-2 style) does not yet")  # fmt: skip
    vocab: dict[str, int] = dict(model["vocab"])
    for added in tokenizer.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    pieces = [f"<unused{i}>" for i in range(vocab_size)]
    for piece, i in vocab.items():
        if i < vocab_size:
            pieces[i] = piece
    merges = [m if isinstance(m, list) else m.split(" ", 1) for m in model.get("merges", [])]
    scores = [0.0] * vocab_size
    for rank, (a, b) in enumerate(merges):
        merged = vocab.get(a + b)
        if merged is not None and merged < vocab_size and scores[merged] == 0.0:
            scores[merged] = -float(rank + 1)
    specials = {a["content"] for a in tokenizer.get("added_tokens", []) if a.get("special")}
    unk = model.get("unk_token")
    types = []
    for piece in pieces:
        if piece == unk:
            types.append(gguf.TokenType.UNKNOWN)
        elif piece in specials:
            types.append(gguf.TokenType.CONTROL)
        elif piece.startswith("<0x") and len(piece) == 6 and piece.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        elif piece.startswith("<unused"):
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)
    normalizers = json.dumps(tokenizer.get("normalizer") or {})
    add_prefix = '"Prepend"' in normalizers

    def token_id(key: str, default: int) -> int:
        value = tok_config.get(key)
        content = value.get("content") if isinstance(value, dict) else value
        return vocab.get(content, default) if content else default

    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    spm = SpmVocab(
        pieces, scores, [int(t) for t in types],
        bos_id=token_id("bos_token", config.get("bos_token_id", 1)),
        eos_id=token_id("eos_token", eos if eos is not None else 2),
        unk_id=vocab.get(unk, 0) if unk else 0,
        add_bos=bool(tok_config.get("add_bos_token", True)),
        add_space_prefix=add_prefix,
    )  # fmt: skip
    template = tok_config.get("chat_template")
    if template is None and (source / "chat_template.jinja").exists():
        template = (source / "chat_template.jinja").read_text()
    return spm, template
