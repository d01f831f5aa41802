"""Write a Llama-family model to a GGUF file that llama.cpp loads.

One writer for every model the project makes itself: the trained default chat model, the
random-weight models for tests and benchmarks, and HF checkpoints converted by hf_to_gguf.py.
Weights arrive as numpy arrays in llama.cpp's layout (``(out_features, in_features)``; for the
``llama`` architecture RoPE rows already in llama.cpp's pairwise order, so no permutation happens
here) and are stored as F32, F16 or Q8_0 through llama.cpp's own ``gguf`` package. Two layouts:
``llama`` (Llama, Mistral) and ``qwen2`` (the same decoder with q/k/v biases, NeoX-style RoPE).
Two vocabularies: SentencePiece-style (``SpmVocab``) and byte-level BPE (``BpeVocab``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np


class WeightType(enum.StrEnum):
    """Storage type of the 2-D weight matrices (norms always stay F32)."""

    F32 = "f32"
    F16 = "f16"
    Q8_0 = "q8_0"


_FILE_TYPES = {
    WeightType.F32: gguf.LlamaFileType.ALL_F32,
    WeightType.F16: gguf.LlamaFileType.MOSTLY_F16,
    WeightType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
}


@dataclass(frozen=True)
class LlamaShape:
    """Hyper-parameters of a Llama-family decoder."""

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    context_length: int = 2048
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    arch: str = "llama"
    """llama.cpp's architecture name: ``llama`` or ``qwen2`` (which adds q/k/v biases)."""

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """GGUF tensor name → numpy shape, for every tensor the model needs."""
        kv = self.kv_heads * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {
            "token_embd.weight": (self.vocab_size, self.hidden),
            "output_norm.weight": (self.hidden,),
            "output.weight": (self.vocab_size, self.hidden),
        }
        for i in range(self.layers):
            shapes |= {
                f"blk.{i}.attn_norm.weight": (self.hidden,),
                f"blk.{i}.attn_q.weight": (self.hidden, self.hidden),
                f"blk.{i}.attn_k.weight": (kv, self.hidden),
                f"blk.{i}.attn_v.weight": (kv, self.hidden),
                f"blk.{i}.attn_output.weight": (self.hidden, self.hidden),
                f"blk.{i}.ffn_norm.weight": (self.hidden,),
                f"blk.{i}.ffn_gate.weight": (self.ffn, self.hidden),
                f"blk.{i}.ffn_up.weight": (self.ffn, self.hidden),
                f"blk.{i}.ffn_down.weight": (self.hidden, self.ffn),
            }
            if self.arch == "qwen2":
                shapes |= {f"blk.{i}.attn_q.bias": (self.hidden,), f"blk.{i}.attn_k.bias": (kv,),
                           f"blk.{i}.attn_v.bias": (kv,)}  # fmt: skip
        return shapes


@dataclass(frozen=True)
class SpmVocab:
    """A SentencePiece-style vocabulary as llama.cpp's ``llama`` tokenizer reads it.

    ``pieces`` use ``▁`` for a space; ``scores`` rank the merges (higher merges first);
    ``types`` are ``gguf.TokenType`` values (NORMAL, CONTROL, BYTE, USER_DEFINED, UNKNOWN).
    """

    pieces: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    unk_id: int
    add_bos: bool = True
    add_space_prefix: bool = False


@dataclass(frozen=True)
class BpeVocab:
    """A byte-level BPE vocabulary (GPT-2 style: Llama 3, Qwen2) as llama.cpp's ``gpt2`` tokenizer reads it.

    ``tokens`` are in the byte-to-unicode alphabet; ``merges`` are "a b" strings in rank order;
    ``pre`` names llama.cpp's pre-tokenizer (its split regex): ``qwen2``, ``llama-bpe``, ``gpt-2``.
    """

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos_id: int
    eos_id: int
    add_bos: bool = False


def write_llama_gguf(
    path: Path,
    shape: LlamaShape,
    tensors: Mapping[str, np.ndarray],
    vocab: SpmVocab | BpeVocab,
    *,
    name: str,
    weight_type: WeightType = WeightType.Q8_0,
    chat_template: str | None = None,
    progress: bool = False,
) -> None:
    """Write ``tensors`` (every name of ``shape.tensor_shapes()``) and ``vocab`` to ``path``.

    Raises ValueError when a tensor is missing or has the wrong shape, before anything is written.
    """
    expected = shape.tensor_shapes()
    for tensor_name, tensor_shape in expected.items():
        got = tensors.get(tensor_name)
        if got is None or got.shape != tensor_shape:
            found = None if got is None else got.shape
            raise ValueError(f"tensor {tensor_name}: expected shape {tensor_shape}, got {found}")
    size = len(vocab.pieces) if isinstance(vocab, SpmVocab) else len(vocab.tokens)
    if size != shape.vocab_size:
        raise ValueError(f"vocab has {size} pieces, the shape says {shape.vocab_size}")

    writer = gguf.GGUFWriter(str(path), arch=shape.arch)
    _write_hparams(writer, shape, name, weight_type)
    _write_vocab(writer, vocab, chat_template)
    for tensor_name in expected:
        _add_tensor(writer, tensor_name, tensors[tensor_name], weight_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=progress)
    writer.close()


def _write_hparams(writer: gguf.GGUFWriter, shape: LlamaShape, name: str, weight_type: WeightType) -> None:
    writer.add_name(name)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_vocab_size(shape.vocab_size)
    writer.add_file_type(_FILE_TYPES[weight_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_vocab(writer: gguf.GGUFWriter, vocab: SpmVocab | BpeVocab, chat_template: str | None) -> None:
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if isinstance(vocab, BpeVocab):
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(vocab.pre)
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.types)
        writer.add_token_merges(vocab.merges)
        writer.add_bos_token_id(vocab.bos_id)
        writer.add_eos_token_id(vocab.eos_id)
        writer.add_add_bos_token(vocab.add_bos)
        writer.add_add_eos_token(False)
        return
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.pieces)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_unk_token_id(vocab.unk_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(vocab.add_space_prefix)


def _add_tensor(writer: gguf.GGUFWriter, name: str, data: np.ndarray, weight_type: WeightType) -> None:
    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim == 1 or weight_type is WeightType.F32:
        writer.add_tensor(name, data)
    elif weight_type is WeightType.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
