"""Checking a GGUF LoRA adapter against its base model before llama.cpp loads it.

llama.cpp's ``llama_adapter_lora_init`` refuses most bad adapters with an error, but not all of
them: tensors of more than two dimensions, or of a type its LoRA matmul does not take, pass its
checks and abort in ``ggml`` at the first decode, taking the engine down. So every rule it applies
is applied here first, from the two files' headers, with a message that names the adapter, what
is wrong and what to do; what reaches native code is an adapter llama.cpp can run.

The format (llama.cpp's ``convert_lora_to_gguf.py``): ``general.type = "adapter"``,
``adapter.type = "lora"``, ``adapter.lora.alpha`` (the scale is alpha / rank; 0 means 1), the base
model's ``general.architecture``, and for each adapted weight ``W`` (``ne = [n_in, n_out]``) two
tensors ``W.lora_a`` (``ne = [n_in, rank]``) and ``W.lora_b`` (``ne = [rank, n_out]``);
``token_embd.weight`` is adapted the other way round (``lora_a``: ``[rank, n_vocab]``, rows looked up
per token; ``lora_b``: ``[rank, n_embd]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import gguf

from lmgate.backends.llamacpp.gguf_file import GGUFFileError, open_gguf

_TYPES = frozenset({
    gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16,
    gguf.GGMLQuantizationType.Q8_0,
})  # fmt: skip
"""What convert_lora_to_gguf.py writes (--outtype f32, f16, bf16, q8_0)."""
_IGNORED_SUFFIX = "_norm.weight"
"""Norm vectors some converters add: llama.cpp skips them (and so do we)."""
_TOKEN_EMBD = "token_embd.weight"


class LoraFileError(ValueError):
    """The adapter cannot be served over this base model; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class LoraFileInfo:
    """What the checks learnt about an adapter."""

    rank: int
    alpha: float
    adapted: tuple[str, ...]
    """The base weights it adapts."""


def check_lora_file(path: Path, base: Path, *, name: str) -> LoraFileInfo:
    """Check the adapter at ``path`` (model name ``name``) fits the base GGUF at ``base``; LoraFileError if not."""
    where = f"LoRA adapter {name!r} ({path})"
    try:
        reader = open_gguf(path)
    except GGUFFileError as exc:
        raise LoraFileError(f"{where}: {exc}") from exc
    base_reader = open_gguf(base)  # the engine opened it already: any error here was reported there
    kind, adapter_type = _string(reader, "general.type"), _string(reader, "adapter.type")
    if kind != "adapter" or adapter_type != "lora":
        key, value = ("general.type", kind) if kind != "adapter" else ("adapter.type", adapter_type)
        what = f"{key} is {value or 'unset'}"
        raise LoraFileError(f"{where} is not a LoRA adapter ({what}): give a GGUF written by llama.cpp's "
                            "convert_lora_to_gguf.py (or lmgate's quantize/gguf_lora.py), not a model")  # fmt: skip
    arch, base_arch = _string(reader, "general.architecture"), _string(base_reader, "general.architecture")
    if arch != base_arch:
        raise LoraFileError(f"{where} is for the {arch!r} architecture, but the base model {base.name} is "
                            f"{base_arch!r}: an adapter runs only over the model it was trained on")  # fmt: skip
    if "adapter.alora.invocation_tokens" in reader.fields:
        raise LoraFileError(f"{where} is an activated LoRA (aLoRA), which lmgate does not serve")
    alpha = _alpha(reader, where)
    pairs = _pairs(reader, where)
    base_tensors = {t.name: t for t in base_reader.tensors}
    ranks = {_check_pair(weight, a, b, base_tensors.get(weight), where) for weight, (a, b) in pairs.items()}
    if not pairs:
        raise LoraFileError(f"{where} has no lora_a / lora_b tensors: it adapts nothing")
    return LoraFileInfo(rank=max(ranks), alpha=alpha, adapted=tuple(sorted(pairs)))


def _string(reader: gguf.GGUFReader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None or not field.types or field.types[0] is not gguf.GGUFValueType.STRING:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def _alpha(reader: gguf.GGUFReader, where: str) -> float:
    field = reader.fields.get("adapter.lora.alpha")
    if field is None:
        return 0.0
    if not field.types or field.types[0] is not gguf.GGUFValueType.FLOAT32:
        raise LoraFileError(f"{where}: adapter.lora.alpha must be a float32")
    alpha = float(field.parts[field.data[0]][0])
    if not math.isfinite(alpha) or alpha < 0:
        raise LoraFileError(f"{where}: adapter.lora.alpha = {alpha} is not a finite, non-negative number")
    return alpha


def _pairs(reader: gguf.GGUFReader, where: str) -> dict[str, tuple[gguf.ReaderTensor, gguf.ReaderTensor]]:
    """Each adapted weight's (lora_a, lora_b) tensors."""
    halves: dict[str, dict[str, gguf.ReaderTensor]] = {}
    for tensor in reader.tensors:
        weight, dot, half = tensor.name.rpartition(".")
        if dot and half in ("lora_a", "lora_b"):
            halves.setdefault(weight, {})[half] = tensor
        elif not tensor.name.endswith(_IGNORED_SUFFIX):
            raise LoraFileError(f"{where}: tensor {tensor.name!r} is neither a .lora_a nor a .lora_b tensor")
    for weight, pair in halves.items():
        if len(pair) != 2:
            missing = "lora_b" if "lora_a" in pair else "lora_a"
            raise LoraFileError(f"{where}: {weight}.{missing} is missing (each adapted weight needs both halves)")
    return {weight: (pair["lora_a"], pair["lora_b"]) for weight, pair in halves.items()}


def _check_pair(
    weight: str, a: gguf.ReaderTensor, b: gguf.ReaderTensor, base: gguf.ReaderTensor | None, where: str
) -> int:
    """The pair's rank, after checking its types and shapes against the base weight (ne order)."""
    if base is None:
        raise LoraFileError(f"{where} adapts {weight!r}, which the base model does not have: "
                            "is it an adapter for another model?")  # fmt: skip
    for tensor in (a, b):
        if tensor.tensor_type not in _TYPES:
            allowed = ", ".join(t.name for t in sorted(_TYPES))
            raise LoraFileError(f"{where}: {tensor.name} is stored as {tensor.tensor_type.name}; "
                                f"LoRA tensors must be one of {allowed}")  # fmt: skip
        if len(tensor.shape) != 2 or min(int(n) for n in tensor.shape) < 1:
            raise LoraFileError(f"{where}: {tensor.name} has shape {_ne(tensor)}; LoRA tensors are matrices")
        block = gguf.GGML_QUANT_SIZES[tensor.tensor_type][0]
        if int(tensor.shape[0]) % block:
            raise LoraFileError(f"{where}: {tensor.name} has rows of {int(tensor.shape[0])} values, not a multiple "
                                f"of {tensor.tensor_type.name}'s block of {block}: store it as F16 or F32")  # fmt: skip
    (a_in, a_out), (b_in, b_out), base_ne = _ne(a), _ne(b), _ne(base)
    if len(base_ne) != 2:
        raise LoraFileError(f"{where}: {weight} of the base model is not a matrix; it cannot be adapted")
    if weight == _TOKEN_EMBD:  # llama.cpp's embedding lookup uses the pair the other way round
        fits, rank = base_ne == (b_out, a_out) and a_in == b_in, a_in
    else:
        fits, rank = base_ne == (a_in, b_out) and a_out == b_in, a_out
    if not fits:
        raise LoraFileError(
            f"{where}: {weight}.lora_a {_ne(a)} and .lora_b {_ne(b)} do not fit the base weight {base_ne} "
            "(ggml's [n_in, n_out] order): is it an adapter for another model of the same architecture?"
        )
    return rank


def _ne(tensor: gguf.ReaderTensor) -> tuple[int, ...]:
    """The tensor's dimensions in ggml's order (``ne[0]`` first), as the GGUF header stores them."""
    return tuple(int(n) for n in tensor.shape)
