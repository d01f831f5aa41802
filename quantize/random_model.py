"""Random-weight Llama-shaped GGUF models of any size, for tests and benchmarks (numpy + gguf).

The weights are seeded Gaussian noise scaled so activations stay finite through many layers; the
vocabulary is a synthetic SentencePiece-style one (bytes, characters, then merges of existing
pieces) so any text tokenizes and every token detokenizes. Output is gibberish by design: these
models measure speed and exercise shapes, the trained tiny-chat model checks meaning. With
``--vocab-from`` the vocabulary (and chat template) is another GGUF's instead: a random draft model
for speculative decoding, whose tokens are the target model's (docs/speculative.md).

    python -m lmgate.quantize.random_model --out /tmp/m.gguf --preset bench-200m
    python -m lmgate.quantize.random_model --out /tmp/draft.gguf --vocab-from models/tiny-chat.gguf
"""

from __future__ import annotations

import argparse
import dataclasses
import string
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from lmgate.quantize.gguf_llama import LlamaShape, SpmVocab, WeightType, write_llama_gguf

PRESETS: dict[str, LlamaShape] = {
    # The benchmark shape of the performance issues: ~200M parameters, GQA 16/4.
    "bench-200m": LlamaShape(vocab_size=32000, hidden=1024, layers=12, heads=16, kv_heads=4, ffn=2816),
    # Small enough to build in a second and decode fast in tests.
    "test-tiny": LlamaShape(vocab_size=512, hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, context_length=1024),
}

_SPECIALS = ["<unk>", "<s>", "</s>"]


def synthetic_vocab(size: int, seed: int = 0) -> SpmVocab:
    """``size`` pieces: 3 specials, 256 byte tokens, printable characters, then merges."""
    if size < 3 + 256 + 100:
        raise ValueError(f"vocab_size must be at least {3 + 256 + 100}, got {size}")
    rng = np.random.default_rng(seed)
    pieces = list(_SPECIALS) + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    chars = ["▁"] + [c for c in string.ascii_letters + string.digits + string.punctuation]
    words = list(chars)
    known = set(pieces) | set(words)
    while len(pieces) + len(words) < size:
        # Merge two short existing pieces; the SPM tokenizer can reach every merge from its parts.
        a, b = rng.choice(len(words), size=2)
        merged = words[a] + words[b]
        if len(merged) <= 8 and merged not in known and "▁" not in merged[1:]:
            known.add(merged)
            words.append(merged)
    pieces += words
    types += [gguf.TokenType.NORMAL] * len(words)
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(words))]
    return SpmVocab(pieces, scores, types, bos_id=1, eos_id=2, unk_id=0, add_space_prefix=True)


def random_tensors(shape: LlamaShape, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, dims in shape.tensor_shapes().items():
        if len(dims) == 1:
            out[name] = np.ones(dims, dtype=np.float32)
        else:
            fan_in = dims[1]
            out[name] = (rng.standard_normal(dims, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)
    return out


def vocab_of(path: Path) -> tuple[SpmVocab, str | None, int | None]:
    """The SentencePiece-style vocabulary, chat template and trained context of a GGUF (ValueError for
    another kind of vocabulary)."""
    reader = gguf.GGUFReader(str(path))

    def value(key: str) -> Any:
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    if value("tokenizer.ggml.model") != "llama":
        raise ValueError(f"{path.name}: only SentencePiece-style (tokenizer.ggml.model llama) vocabularies are copied")
    vocab = SpmVocab(
        list(value("tokenizer.ggml.tokens")),
        [float(x) for x in value("tokenizer.ggml.scores")],
        [int(x) for x in value("tokenizer.ggml.token_type")],
        bos_id=int(value("tokenizer.ggml.bos_token_id")),
        eos_id=int(value("tokenizer.ggml.eos_token_id")),
        unk_id=int(value("tokenizer.ggml.unknown_token_id") or 0),
        add_bos=bool(value("tokenizer.ggml.add_bos_token")),
        add_space_prefix=bool(value("tokenizer.ggml.add_space_prefix")),
    )
    context = value(f"{value('general.architecture')}.context_length")
    return vocab, value("tokenizer.chat_template"), None if context is None else int(context)


def build_random_model(
    path: Path,
    shape: LlamaShape,
    *,
    weight_type: WeightType = WeightType.Q8_0,
    seed: int = 0,
    vocab_from: Path | None = None,
) -> Path:
    """Write a random-weight model of ``shape`` to ``path`` and return the path; with ``vocab_from``,
    with that GGUF's vocabulary and chat template (``shape.vocab_size`` is taken from it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    template = None
    if vocab_from is not None:
        vocab, template, context = vocab_of(vocab_from)
        shape = dataclasses.replace(shape, vocab_size=len(vocab.pieces), context_length=context or shape.context_length)
    else:
        vocab = synthetic_vocab(shape.vocab_size, seed)
    tensors = random_tensors(shape, seed)
    write_llama_gguf(path, shape, tensors, vocab, name=path.stem, weight_type=weight_type, chat_template=template)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a random-weight Llama-shaped GGUF model.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="test-tiny")
    parser.add_argument("--type", choices=[t.value for t in WeightType], default=WeightType.Q8_0.value)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-from", type=Path, help="copy this GGUF's vocabulary (a draft model for it)")
    for field in ("vocab_size", "hidden", "layers", "heads", "kv_heads", "ffn", "context_length"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, help="override the preset")
    args = parser.parse_args(argv)
    base = PRESETS[args.preset]
    overrides = {k: v for k in base.__dataclass_fields__ if (v := getattr(args, k, None)) is not None}
    shape = dataclasses.replace(base, **overrides)
    build_random_model(args.out, shape, weight_type=WeightType(args.type), seed=args.seed, vocab_from=args.vocab_from)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
