"""A random-weight target model and a small draft model that agrees with it, for speculative decoding benchmarks.

Two random models of the same vocabulary agree on almost no greedy token (docs/performance.md, "Fifth
session": a copy of bench-200m cut to its first layers agreed at 0–3 % of positions), so a random draft
measures nothing. Here the target *contains* its draft: the draft's hidden state is the first
``draft.hidden`` dimensions of the target's, and every weight that writes into those dimensions is the
draft's, except for what the target's other heads, feed-forward units and later layers add to them,
scaled by ``leak``. At ``leak`` 0 the two compute the same logits (in Q8_0 the same bits on test-tiny's
shape); a larger ``leak`` makes the target's greedy token differ from the draft's more often, as a trained
draft differs from its model. The target keeps its full shape and dense weights, so it costs what any model
of that shape costs. The dimensions beyond the draft's stay zero in its residual stream, so its RMS norms
see ``sum(x²) / hidden`` where the draft's see ``sum(x²) / draft.hidden``: the target's norm weights are
``sqrt(draft.hidden / hidden)`` on the draft's dimensions and its epsilon ``draft.hidden / hidden`` of the
draft's, which makes the two norms equal.

    python -m lmgate.quantize.draft_pair --target /tmp/t.gguf --draft /tmp/d.gguf --leak 0.08

Requirements (ValueError otherwise): the ``llama`` architecture (no biases); the same head size,
vocabulary, context and RoPE; the draft's query heads per KV head equal to the target's; no more draft
layers, heads, KV heads, hidden or FFN units than the target's. The target is written with the epsilon the
draft needs (``target_shape``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from lmgate.quantize.gguf_llama import LlamaShape, WeightType, write_llama_gguf
from lmgate.quantize.random_model import PRESETS, random_tensors, synthetic_vocab

BENCH_DRAFT = LlamaShape(vocab_size=32000, hidden=256, layers=2, heads=4, kv_heads=1, ffn=704)
"""The draft of bench-200m's shape: ~5 % of its multiply-adds per token (its output head is most of them)."""
VERSION = 2
"""Bumped when the construction changes, so that a cached pair (bench/draft_model.py) is built again."""
LEAK = 0.08
"""With bench-200m's shape: the draft's greedy token is the target's at ~81 % of positions (teacher-forced,
64 tokens after four prompts), about what a trained draft of a 1B model achieves for an 8B one."""
LOGIT_SCALE = 8.0
"""Both output heads scaled: random weights give logits of unit spread, a flat distribution (top token
under 10 %) that no trained model has; at 8 the top token's probability has a median of ~0.6 and a
draft token of probability above 0.8 is the target's ~99 % of the time (0.5–0.8: 84 %, below 0.5: 63 %),
so a draft's confidence means what it means for trained models. Greedy tokens do not change with the scale."""


def check_shapes(target: LlamaShape, draft: LlamaShape) -> None:
    """Raise ValueError unless ``draft`` can be embedded in ``target`` (the module's requirements)."""
    problems = []
    for shape in (target, draft):
        if shape.arch != "llama":
            problems.append(f"architecture {shape.arch} (only llama: the q/k/v biases are not embedded)")
        if shape.hidden % shape.heads or shape.heads % shape.kv_heads:
            problems.append(f"hidden {shape.hidden} with {shape.heads} heads and {shape.kv_heads} KV heads")
    if draft.head_dim != target.head_dim:
        problems.append(f"head size {draft.head_dim} (target {target.head_dim})")
    group, target_group = draft.heads // draft.kv_heads, target.heads // target.kv_heads
    if group != target_group:
        problems.append(f"{group} query heads per KV head (target {target_group})")
    for field in ("vocab_size", "context_length", "rope_theta"):
        if getattr(draft, field) != getattr(target, field):
            problems.append(f"{field} {getattr(draft, field)} (target {getattr(target, field)})")
    for field in ("layers", "heads", "kv_heads", "hidden", "ffn"):
        if getattr(draft, field) > getattr(target, field):
            problems.append(f"{field} {getattr(draft, field)} above the target's {getattr(target, field)}")
    if problems:
        raise ValueError("the draft does not fit in the target: " + "; ".join(problems))


def target_shape(target: LlamaShape, draft: LlamaShape) -> LlamaShape:
    """``target`` with the RMS-norm epsilon that makes its norms over ``hidden`` dimensions (of which only the
    draft's are not 0, weighted ``sqrt(draft.hidden / hidden)``) equal the draft's."""
    return dataclasses.replace(target, rms_eps=draft.rms_eps * draft.hidden / target.hidden)


def pair_tensors(
    target: LlamaShape, draft: LlamaShape, *, leak: float, logit_scale: float = 1.0, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The target's and the draft's tensors (GGUF names → arrays), the draft embedded in the target."""
    check_shapes(target, draft)
    small = random_tensors(draft, seed)
    small["output.weight"] *= logit_scale
    big = random_tensors(target, seed + 1)
    d, f = draft.hidden, draft.ffn
    kv_rows = draft.kv_heads * draft.head_dim
    norm = np.ones(target.hidden, dtype=np.float32)
    norm[:d] = np.sqrt(d / target.hidden)  # the target's RMS over all its dimensions, of which only d are not 0

    def embed(name: str, rows: int, cols: int) -> None:
        big[name][:rows, :cols] = small[name]

    def writes_residual(name: str, own_cols: int, layer_is_drafts: bool) -> None:
        """A projection into the residual stream: the draft's columns as they are, the rest leaked."""
        weight = big[name]
        weight[:d] *= leak
        weight[d:] = 0.0  # the dimensions beyond the draft's stay 0
        if layer_is_drafts:
            weight[:d, :own_cols] = small[name]

    big["token_embd.weight"][:, d:] = 0.0
    embed("token_embd.weight", target.vocab_size, d)
    embed("output.weight", target.vocab_size, d)
    big["output_norm.weight"] = norm.copy()
    for i in range(target.layers):
        ours = i < draft.layers
        big[f"blk.{i}.attn_norm.weight"] = norm.copy()
        big[f"blk.{i}.ffn_norm.weight"] = norm.copy()
        if ours:
            embed(f"blk.{i}.attn_q.weight", d, d)
            embed(f"blk.{i}.attn_k.weight", kv_rows, d)
            embed(f"blk.{i}.attn_v.weight", kv_rows, d)
            embed(f"blk.{i}.ffn_gate.weight", f, d)
            embed(f"blk.{i}.ffn_up.weight", f, d)
        writes_residual(f"blk.{i}.attn_output.weight", d, ours)
        writes_residual(f"blk.{i}.ffn_down.weight", f, ours)
    return big, small


def build_draft_pair(
    target_path: Path,
    draft_path: Path,
    *,
    target: LlamaShape = PRESETS["bench-200m"],
    draft: LlamaShape = BENCH_DRAFT,
    leak: float = LEAK,
    logit_scale: float = LOGIT_SCALE,
    seed: int = 0,
    weight_type: WeightType = WeightType.Q8_0,
) -> tuple[Path, Path]:
    """Write the target and its draft (same synthetic vocabulary as ``random_model`` with ``seed``)."""
    if leak < 0 or logit_scale <= 0:
        raise ValueError(f"leak must be at least 0 and logit_scale above 0, got {leak} and {logit_scale}")
    big, small = pair_tensors(target, draft, leak=leak, logit_scale=logit_scale, seed=seed)
    vocab = synthetic_vocab(target.vocab_size, seed)
    for path, shape, tensors in ((target_path, target_shape(target, draft), big), (draft_path, draft, small)):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")  # an interrupted build leaves no file at ``path``
        write_llama_gguf(partial, shape, tensors, vocab, name=path.stem, weight_type=weight_type)
        partial.replace(path)
    return target_path, draft_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a random target model and a draft model that agrees with it.")
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--draft", type=Path, required=True)
    parser.add_argument("--leak", type=float, default=LEAK, help="how much the target adds to the draft's dimensions")
    parser.add_argument("--logit-scale", type=float, default=LOGIT_SCALE, help="both output heads multiplied by it")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="bench-200m", help="the target's shape")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    target = PRESETS[args.preset]
    draft = BENCH_DRAFT if args.preset == "bench-200m" else dataclasses.replace(
        target, hidden=target.hidden // 2, heads=target.heads // 2, kv_heads=max(target.kv_heads // 2, 1),
        ffn=target.ffn // 2, layers=1)  # fmt: skip
    scales = {"leak": args.leak, "logit_scale": args.logit_scale}
    build_draft_pair(args.target, args.draft, target=target, draft=draft, seed=args.seed, **scales)
    for path in (args.target, args.draft):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
