"""An HF checkpoint of the Llama family to GGUF, then quantized by llama.cpp (``lmgate quantize gguf``).

- Architectures: ``LlamaForCausalLM`` and ``MistralForCausalLM`` (llama.cpp's ``llama``: q/k rows
  permuted into its pairwise RoPE order, as llama.cpp's own converter does) and
  ``Qwen2ForCausalLM`` (llama.cpp's ``qwen2``: q/k/v biases, NeoX RoPE, no permutation). Others
  fail with a message naming what is supported.
- Tokenizers, from tokenizer.json: SentencePiece-style BPE (``▁`` for spaces, byte fallback:
  Llama 2, Mistral), written as llama.cpp's ``llama`` vocabulary with each merged piece scored by
  its merge rank (SentencePiece BPE and rank-ordered BPE tokenize alike); and byte-level BPE
  (GPT-2 style: Llama 3, Qwen2), written as llama.cpp's ``gpt2`` vocabulary with its merges and the
  pre-tokenizer recognised from the split regex (``qwen2``, ``llama-bpe``, ``gpt-2``). An unknown
  split regex is refused: llama.cpp would split the text differently and the ids would not match.
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

from lmgate.quantize.checkpoint import GGUF_ARCHITECTURES, check_checkpoint
from lmgate.quantize.errors import UnsupportedModel
from lmgate.quantize.gguf_llama import BpeVocab, LlamaShape, SpmVocab, WeightType, write_llama_gguf

ARCHITECTURES = GGUF_ARCHITECTURES
"""HF architecture → llama.cpp architecture."""
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)

# The split regexes of the byte-level BPE tokenizers llama.cpp knows, as tokenizer.json spells them.
_LETTERS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PRE_TOKENIZERS = {
    _LETTERS + r"\p{N}" + _REST: "qwen2",
    _LETTERS + r"\p{N}{1,3}" + _REST: "llama-bpe",
}
"""Split regex → llama.cpp's pre-tokenizer name (a ByteLevel pre-tokenizer with its own regex is ``gpt-2``)."""


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


def permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """HF's half-split RoPE rows into llama.cpp's pairwise order (as convert_hf_to_gguf does)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def convert(source: Path, out: Path, quant: QuantType = QuantType.F16, *, progress: bool = False) -> Path:
    """Write ``source`` (an HF directory) as a GGUF of type ``quant`` to ``out`` (a progress bar on
    stderr with ``progress``; llama.cpp's quantizer reports each tensor itself). CheckpointError
    (UnsupportedModel among them) when ``source`` lacks a file or holds a model this does not convert."""
    check_checkpoint(source)
    config = json.loads((source / "config.json").read_text())
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise UnsupportedModel(f"{source}: architecture {arch} is not supported; supported: {supported}")
    shape = _shape(config, ARCHITECTURES[arch])
    tensors = dict(_tensors(source, shape, tie=bool(config.get("tie_word_embeddings", False))))
    vocab, template = _vocab(source, config, shape.vocab_size)
    base = WeightType.F32 if quant is QuantType.F32 else WeightType.F16
    out.parent.mkdir(parents=True, exist_ok=True)
    if quant in (QuantType.F32, QuantType.F16):
        write_llama_gguf(
            out, shape, tensors, vocab, name=source.name, weight_type=base, chat_template=template, progress=progress
        )
        return out
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        full = Path(tmp) / "f16.gguf"
        write_llama_gguf(
            full, shape, tensors, vocab, name=source.name, weight_type=base, chat_template=template, progress=progress
        )
        quantize_gguf(full, out, quant)
    return out


def quantize_gguf(source: Path, out: Path, quant: QuantType) -> None:
    """llama.cpp's ``llama_model_quantize`` from an F16/F32 GGUF."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _FTYPES[quant]
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {quant.value}")


def _shape(config: dict, arch: str) -> LlamaShape:
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
        rope_theta=float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta", 1e4)),
        rms_eps=float(config.get("rms_norm_eps", 1e-5)),
        arch=arch,
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
        module, _, param = rest.rpartition(".")
        kind = _HF_NAMES.get(module)
        biased = shape.arch == "qwen2" and kind in ("attn_q", "attn_k", "attn_v")
        if kind is None or param not in (("weight", "bias") if biased else ("weight",)):
            raise UnsupportedModel(f"unexpected tensor {name} for a {shape.arch} layout")
        if shape.arch == "llama" and kind == "attn_q":
            data = permute(data, shape.heads)
        elif shape.arch == "llama" and kind == "attn_k":
            data = permute(data, shape.kv_heads)
        yield f"blk.{layer}.{kind}.{param}", data
    elif not name.endswith("rotary_emb.inv_freq"):
        raise UnsupportedModel(f"unexpected tensor {name} for a {shape.arch} layout")


def _vocab(source: Path, config: dict, vocab_size: int) -> tuple[SpmVocab | BpeVocab, str | None]:
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    config_path = source / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text()) if config_path.exists() else {}
    template = tok_config.get("chat_template")
    if template is None and (source / "chat_template.jinja").exists():
        template = (source / "chat_template.jinja").read_text()
    model = tokenizer["model"]
    if model.get("type") == "BPE" and '"ByteLevel"' in json.dumps(tokenizer.get("pre_tokenizer")):
        return _byte_level_vocab(tokenizer, tok_config, config, vocab_size), template
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise UnsupportedModel("only BPE tokenizers convert: SentencePiece-style (byte fallback, ▁ for spaces) "
                               "or byte-level (GPT-2 style)")  # fmt: skip
    return _spm_vocab(tokenizer, tok_config, config, vocab_size), template


def _spm_vocab(tokenizer: dict, tok_config: dict, config: dict, vocab_size: int) -> SpmVocab:
    import gguf

    model = tokenizer["model"]
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

    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    return SpmVocab(
        pieces, scores, [int(t) for t in types],
        bos_id=_special_id(tok_config, "bos_token", vocab, config.get("bos_token_id", 1)),
        eos_id=_special_id(tok_config, "eos_token", vocab, eos if eos is not None else 2),
        unk_id=vocab.get(unk, 0) if unk else 0,
        add_bos=bool(tok_config.get("add_bos_token", True)),
        add_space_prefix=add_prefix,
    )  # fmt: skip


def _byte_level_vocab(tokenizer: dict, tok_config: dict, config: dict, vocab_size: int) -> BpeVocab:
    import gguf

    pre = _pre_tokenizer(tokenizer.get("pre_tokenizer") or {})
    model = tokenizer["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    added = tokenizer.get("added_tokens", [])
    for token in added:
        vocab[token["content"]] = token["id"]
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]  # ids past the tokenizer, named as llama.cpp names them
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for token, i in vocab.items():
        if i < vocab_size:
            tokens[i], types[i] = token, int(gguf.TokenType.NORMAL)
    for token in added:
        if token["id"] < vocab_size:
            kind = gguf.TokenType.CONTROL if token.get("special") else gguf.TokenType.USER_DEFINED
            types[token["id"]] = int(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    eos_id = _special_id(tok_config, "eos_token", vocab, eos if eos is not None else 0)
    bos_id = _special_id(tok_config, "bos_token", vocab, config.get("bos_token_id") or eos_id)
    add_bos = bool(tok_config.get("add_bos_token", False)) and tok_config.get("bos_token") is not None
    return BpeVocab(tokens, types, merges, pre, bos_id=bos_id, eos_id=eos_id, add_bos=add_bos)


def _pre_tokenizer(pre: dict) -> str:
    """llama.cpp's name for the split rule of a byte-level BPE tokenizer, or ``UnsupportedModel``."""
    steps = pre.get("pretokenizers") or [pre]
    patterns = [s["pattern"].get("Regex") for s in steps if s.get("type") == "Split" and "pattern" in s]
    if not patterns:
        if any(s.get("type") == "ByteLevel" and s.get("use_regex", True) for s in steps):
            return "gpt-2"
        raise UnsupportedModel("a byte-level BPE tokenizer without a split regex is not supported")
    name = PRE_TOKENIZERS.get(patterns[0]) if len(patterns) == 1 else None
    if name is None:
        known = ", ".join(PRE_TOKENIZERS.values())
        raise UnsupportedModel(f"the tokenizer's split regex is not one llama.cpp knows as {known} or gpt-2: "
                               f"{patterns!r}")  # fmt: skip
    return name


def _special_id(tok_config: dict, key: str, vocab: dict[str, int], default: int) -> int:
    value = tok_config.get(key)
    content = value.get("content") if isinstance(value, dict) else value
    return vocab.get(content, default) if content else default
