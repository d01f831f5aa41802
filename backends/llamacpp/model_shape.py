"""A model's shape for the memory planner, from what the user has: a GGUF file, an HF config.json, or a
parameter count and a quantization.

- ``read_shape(path)``: the GGUF header (exact: the tensors' own sizes).
- ``shape_from_hf_config(path, quant)``: the architecture from config.json; the parameters counted
  from it (a Llama-style decoder: attention, gated MLP, experts if any) and sized at ``quant``.
- ``assumed_shape(params, quant)``: no file at all. The KV cache depends on layers and KV heads,
  which a parameter count does not give, so the shape of a well-known model of the nearest size
  is assumed (``ASSUMED``) and named in the output. For 7B that is Llama 2 7B, whose KV heads are
  not grouped: the cautious choice (Mistral and Qwen2 7B need 4 to 8 times less KV).

Weights at ``quant`` are parameters × the bits per weight of ggml's block for that type
(``gguf.GGML_QUANT_SIZES``: Q4_K is 144 bytes per 256 weights, 4.5 bits). The K-quant mixes
(``_m``, ``_s``) keep some tensors at a higher type, so their files run 5-10 % larger (Llama 2 7B at
Q4_K_M: 4.08 GB, against 3.79 GB for its 6.74B weights at 4.5 bits).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import gguf

from lmgate.backends.llamacpp.gguf_file import GGUFFileError, open_gguf

QUANTS: dict[str, str] = {
    "f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q6_k": "Q6_K",
    "q5_k_m": "Q5_K", "q5_k_s": "Q5_K", "q5_0": "Q5_0", "q5_1": "Q5_1",
    "q4_k_m": "Q4_K", "q4_k_s": "Q4_K", "q4_0": "Q4_0", "q4_1": "Q4_1", "iq4_xs": "IQ4_XS",
    "q3_k_m": "Q3_K", "q3_k_s": "Q3_K", "q3_k_l": "Q3_K", "q2_k": "Q2_K",
}  # fmt: skip
"""llama.cpp's file types (``--quant``) → the ggml block type most of their weights are stored in."""


@dataclass(frozen=True)
class ModelShape:
    layers: int
    embedding: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    ffn: int
    context_train: int
    weights_bytes: int
    shape_origin: str = "the GGUF header"
    """Where the dimensions come from, as the plan prints it."""
    weights_origin: str = "the tensors in the file"
    """How the weights' size was found."""


@dataclass(frozen=True)
class _Known:
    name: str
    params: float
    layers: int
    embedding: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    context: int


ASSUMED = (
    _Known("Qwen2.5 0.5B", 0.49e9, 24, 896, 14, 2, 64, 4864, 151936, 32768),
    _Known("Llama 3.2 1B", 1.24e9, 16, 2048, 32, 8, 64, 8192, 128256, 131072),
    _Known("Llama 3.2 3B", 3.21e9, 28, 3072, 24, 8, 128, 8192, 128256, 131072),
    _Known("Llama 2 7B", 6.74e9, 32, 4096, 32, 32, 128, 11008, 32000, 4096),
    _Known("Llama 3 8B", 8.03e9, 32, 4096, 32, 8, 128, 14336, 128256, 8192),
    _Known("Llama 2 13B", 13.0e9, 40, 5120, 40, 40, 128, 13824, 32000, 4096),
    _Known("Code Llama 34B", 33.7e9, 48, 8192, 64, 8, 128, 22016, 32016, 16384),
    _Known("Llama 3 70B", 70.6e9, 80, 8192, 64, 8, 128, 28672, 128256, 8192),
    _Known("Llama 3.1 405B", 406e9, 126, 16384, 128, 8, 128, 53248, 128256, 131072),
)
"""Shapes assumed for a bare parameter count: the published configs of these models."""

_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmbt]?)\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def parse_params(text: str) -> int:
    """``7B``, ``0.5b``, ``350M``, ``7000000000`` → a parameter count; ValueError otherwise."""
    match = _COUNT.match(text)
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"expected a parameter count such as 7B, 0.5B or 350M, got {text!r}")
    return int(float(match[1]) * _SCALE[match[2].lower()])


def bits_per_weight(quant: str) -> float:
    """Bits per weight of the block type ``quant`` (a QUANTS key) stores most weights in."""
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[QUANTS[quant]]]
    return type_size * 8 / block


def weights_note(params: int, quant: str, how: str = "") -> str:
    """How the weights' size was reckoned, as the plan prints it (``how``: where the count comes from)."""
    note = f"{params / 1e9:.2f}B parameters{how} x {bits_per_weight(quant):g} bits"
    if QUANTS[quant].lower() == quant:
        return f"{note}, {quant}"
    mix = "; the mix keeps some tensors at 6 bits, so files run 5-10 % larger" if "_k_" in quant else ""
    return f"{note}: {quant} stores them as {QUANTS[quant]} blocks{mix}"


def read_shape(path: Path) -> ModelShape:
    """The decoder's dimensions from the GGUF metadata; GGUFFileError if the file or they are not there."""
    reader = open_gguf(path)
    arch = _gguf_field(reader, path, "general.architecture", str)

    def key(name: str, default: int | None = None) -> int:
        return _gguf_field(reader, path, f"{arch}.{name}", int, default)

    heads = key("attention.head_count")
    embedding = key("embedding_length")
    vocab_tokens = reader.fields.get("tokenizer.ggml.tokens")
    return ModelShape(
        layers=key("block_count"),
        embedding=embedding,
        heads=heads,
        kv_heads=key("attention.head_count_kv", heads),
        head_dim=key("attention.key_length", embedding // heads),
        vocab=key("vocab_size", len(vocab_tokens.data) if vocab_tokens else 0),
        ffn=key("feed_forward_length", 4 * embedding),
        context_train=key("context_length", 0),
        weights_bytes=sum(int(t.n_bytes) for t in reader.tensors),
    )


def shape_from_hf_config(path: Path, quant: str, params: int | None = None) -> ModelShape:
    """The shape an HF ``config.json`` describes, its weights sized at ``quant`` (``params`` overrides
    the count made from the config); ValueError naming the file and the missing key."""
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from exc
    config = config.get("text_config", config) if "num_hidden_layers" not in config else config

    def key(name: str, default: int | None = None) -> int:
        value = config.get(name, default)
        if not isinstance(value, int):
            raise ValueError(f"{path} has no integer `{name}`: is it a decoder model's config.json?")
        return value

    hidden, heads, layers = key("hidden_size"), key("num_attention_heads"), key("num_hidden_layers")
    kv_heads, head_dim = key("num_key_value_heads", heads), config.get("head_dim") or hidden // heads
    vocab, ffn = key("vocab_size"), key("intermediate_size")
    experts = config.get("num_local_experts") or config.get("num_experts") or 1
    expert_ffn = config.get("moe_intermediate_size") or ffn
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    per_layer = attention + 3 * hidden * expert_ffn * experts + 2 * hidden
    counted = layers * per_layer + vocab * hidden * (1 if config.get("tie_word_embeddings") else 2) + hidden
    count = params or counted
    return ModelShape(
        layers=layers, embedding=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab=vocab, ffn=ffn,
        context_train=key("max_position_embeddings", 0), weights_bytes=_bytes(count, quant),
        shape_origin=f"{path}" + (f" ({experts} experts a layer)" if experts > 1 else ""),
        weights_origin=weights_note(count, quant, "" if params else " (counted from the config)"),
    )  # fmt: skip


def assumed_shape(params: int, quant: str) -> ModelShape:
    """The shape of the ASSUMED model nearest in size to ``params``, with ``params`` weights at ``quant``."""
    known = min(ASSUMED, key=lambda k: abs(math.log(params / k.params)))
    return ModelShape(
        layers=known.layers, embedding=known.embedding, heads=known.heads, kv_heads=known.kv_heads,
        head_dim=known.head_dim, vocab=known.vocab, ffn=known.ffn, context_train=known.context,
        weights_bytes=_bytes(params, quant), weights_origin=weights_note(params, quant),
        shape_origin=f"assumed: {known.name}'s, the nearest well-known size (--hf-config gives the real one)",
    )  # fmt: skip


def _bytes(params: int, quant: str) -> int:
    return int(params * bits_per_weight(quant) / 8)


Field = TypeVar("Field", str, int)


def _gguf_field(
    reader: gguf.GGUFReader, path: Path, name: str, kind: type[Field], default: Field | None = None
) -> Field:
    field = reader.fields.get(name)
    if field is None:
        if default is None:
            raise GGUFFileError(f"{path}: the GGUF metadata has no {name} (a model lmgate cannot serve?)")
        return default
    return kind(field.contents())
