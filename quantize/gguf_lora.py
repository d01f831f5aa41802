"""Write a LoRA adapter as a GGUF file llama.cpp loads (``llama_adapter_lora_init``), and build random ones.

The format is the one llama.cpp's ``convert_lora_to_gguf.py`` writes: ``general.type = "adapter"``,
``adapter.type = "lora"``, ``adapter.lora.alpha`` (llama.cpp scales the update by alpha / rank), the
base model's ``general.architecture``, and for each adapted weight ``W`` two tensors ``W.lora_a`` and
``W.lora_b``. Pairs arrive in PEFT's numpy layout — A ``(rank, in_features)``, B ``(out_features,
rank)`` — which GGUF stores as ggml's ``ne = [in, rank]`` and ``[rank, out]``: what llama.cpp expects
for every weight but ``token_embd.weight`` (not supported here). The adapted weight is
``W + scale * alpha / rank * B @ A``.

    python -m lmgate.quantize.gguf_lora --base /tmp/m.gguf --out /tmp/m.lora.gguf   # a random adapter
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Mapping
from pathlib import Path

import gguf
import numpy as np

from lmgate.quantize.gguf_llama import LlamaShape
from lmgate.quantize.random_model import PRESETS

LoraPair = tuple[np.ndarray, np.ndarray]
"""(A of shape (rank, in_features), B of shape (out_features, rank)), float32."""


BASE_SHA256 = "lmgate.lora.base_weights_sha256"
"""Metadata: ``weights_sha256`` of the base model an adapter was trained on (llama.cpp ignores the key)."""


def weights_sha256(path: Path) -> str:
    """A digest of a GGUF model's tensors (names and stored bytes), not of its metadata: a new chat
    template leaves it alone, new weights change it."""
    digest = hashlib.sha256()
    for tensor in gguf.GGUFReader(path).tensors:
        digest.update(tensor.name.encode() + b"\0")
        digest.update(np.ascontiguousarray(tensor.data).tobytes())
    return digest.hexdigest()


def write_lora_gguf(
    path: Path, *, arch: str, alpha: float, pairs: Mapping[str, LoraPair], name: str, f16: bool = False,
    base_sha256: str | None = None,
) -> None:  # fmt: skip
    """Write the adapter ``pairs`` (base weight name → (A, B)) for an ``arch`` model to ``path``.

    ValueError, before anything is written, when a pair's shapes disagree or it adapts the embedding.
    """
    for weight, (a, b) in pairs.items():
        if weight == "token_embd.weight":
            raise ValueError("token_embd.weight is adapted the other way round by llama.cpp; not supported here")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"{weight}: A {a.shape} and B {b.shape} are not (rank, in) and (out, rank)")
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    writer.add_name(name)
    if base_sha256 is not None:
        writer.add_string(BASE_SHA256, base_sha256)
    dtype = np.float16 if f16 else np.float32
    for weight, (a, b) in pairs.items():
        writer.add_tensor(f"{weight}.lora_a", np.ascontiguousarray(a, dtype=np.float32).astype(dtype))
        writer.add_tensor(f"{weight}.lora_b", np.ascontiguousarray(b, dtype=np.float32).astype(dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def random_pairs(
    shape: LlamaShape, *, rank: int = 4, targets: tuple[str, ...] = ("attn_q", "attn_v", "ffn_down"), seed: int = 0,
    strength: float = 1.0,
) -> dict[str, LoraPair]:  # fmt: skip
    """Seeded random pairs for ``targets`` of every layer, sized so that B @ A is about ``strength``
    times as large as the (random model's) weight it adds to: enough to change every greedy answer."""
    rng = np.random.default_rng(seed)
    shapes = shape.tensor_shapes()
    pairs: dict[str, LoraPair] = {}
    for layer in range(shape.layers):
        for target in targets:
            weight = f"blk.{layer}.{target}.weight"
            out_features, in_features = shapes[weight]
            a = rng.standard_normal((rank, in_features), dtype=np.float32) / np.sqrt(in_features)
            b = rng.standard_normal((out_features, rank), dtype=np.float32) * strength / np.sqrt(rank)
            pairs[weight] = (a.astype(np.float32), b.astype(np.float32))
    return pairs


def build_random_lora(path: Path, shape: LlamaShape, *, rank: int = 4, seed: int = 0, alpha: float = 0.0) -> Path:
    """Write a random adapter over a model of ``shape`` (e.g. a random model of the same preset) to ``path``.

    ``alpha`` 0 is llama.cpp's "no alpha": the update is applied at scale 1 (times the configured scale).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    write_lora_gguf(path, arch=shape.arch, alpha=alpha, pairs=random_pairs(shape, rank=rank, seed=seed),
                    name=path.stem)  # fmt: skip
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a random LoRA adapter (GGUF) over a random model's shape.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="test-tiny")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build_random_lora(args.out, PRESETS[args.preset], rank=args.rank, seed=args.seed)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
