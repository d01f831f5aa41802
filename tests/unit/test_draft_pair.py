"""quantize/draft_pair.py: a random target that contains its draft, agreeing as much as ``leak`` lets it."""

import dataclasses

import numpy as np
import pytest
from llama_cpp import Llama

from lmgate.quantize.draft_pair import build_draft_pair, check_shapes, pair_tensors, target_shape
from lmgate.quantize.random_model import PRESETS

TARGET = PRESETS["test-tiny"]  # hidden 64, 4 heads of 16, 2 KV heads, ffn 128, 2 layers
DRAFT = dataclasses.replace(TARGET, hidden=32, heads=2, kv_heads=1, ffn=64, layers=1)
PROMPTS = ["Once upon a time, in a land far away", "def f(x):\n    return x * 2\n", "R12 7. The quick brown fox"]


def test_shapes_that_do_not_fit_are_refused():
    check_shapes(TARGET, DRAFT)
    with pytest.raises(ValueError, match="head size 8"):
        check_shapes(TARGET, dataclasses.replace(DRAFT, heads=4, kv_heads=2))
    with pytest.raises(ValueError, match="layers 3 above the target's 2"):
        check_shapes(TARGET, dataclasses.replace(DRAFT, layers=3))
    with pytest.raises(ValueError, match="vocab_size 1024"):
        check_shapes(TARGET, dataclasses.replace(DRAFT, vocab_size=1024))
    with pytest.raises(ValueError, match="architecture qwen2"):
        check_shapes(dataclasses.replace(TARGET, arch="qwen2"), dataclasses.replace(DRAFT, arch="qwen2"))
    # The target's norms see sum(x²) / 64 where the draft's see sum(x²) / 32: half the epsilon, weights sqrt(1/2).
    assert target_shape(TARGET, DRAFT).rms_eps == pytest.approx(DRAFT.rms_eps / 2)
    with pytest.raises(ValueError, match="leak must be at least 0"):
        build_draft_pair(None, None, target=TARGET, draft=DRAFT, leak=-1)  # type: ignore[arg-type]


def test_the_target_holds_the_draft_in_its_first_dimensions():
    big, small = pair_tensors(TARGET, DRAFT, leak=0.25, logit_scale=4.0)
    d, f = DRAFT.hidden, DRAFT.ffn
    assert np.array_equal(big["token_embd.weight"][:, :d], small["token_embd.weight"])
    assert not big["token_embd.weight"][:, d:].any()
    assert np.array_equal(big["output.weight"][:, :d], small["output.weight"])
    assert np.std(small["output.weight"]) == pytest.approx(4.0 / np.sqrt(d), rel=0.05)  # logit_scale
    assert np.allclose(big["output_norm.weight"][:d], 0.5 * np.sqrt(2)) and np.all(big["output_norm.weight"][d:] == 1)
    assert np.array_equal(big["blk.0.attn_q.weight"][:d, :d], small["blk.0.attn_q.weight"])
    assert np.array_equal(big["blk.0.attn_k.weight"][:16, :d], small["blk.0.attn_k.weight"])
    assert np.array_equal(big["blk.0.ffn_up.weight"][:f, :d], small["blk.0.ffn_up.weight"])
    for layer in (0, 1):  # what writes into the residual stream: the draft's part, the rest leaked, nothing beyond
        down = big[f"blk.{layer}.ffn_down.weight"]
        assert not down[d:].any()
        leaked = down[:d, f:] if layer == 0 else down[:d]
        assert 0 < np.abs(leaked).max() < 0.25 * 6 / np.sqrt(TARGET.ffn)  # unscaled: ~4 / sqrt(ffn)
    assert np.array_equal(big["blk.0.ffn_down.weight"][:d, :f], small["blk.0.ffn_down.weight"])


def agreement(target_path, draft_path, tokens: int = 24) -> float:
    """Positions where the draft's greedy token is the target's, over the target's own greedy continuations."""
    settings = {"n_ctx": 256, "n_threads": 2, "logits_all": True, "verbose": False}
    target, draft = Llama(str(target_path), **settings), Llama(str(draft_path), **settings)
    same = total = 0
    for prompt in PROMPTS:
        ids = target.tokenize(prompt.encode())
        target.reset()
        target.eval(ids)
        out = list(ids)
        for _ in range(tokens):
            out.append(int(np.argmax(target.scores[target.n_tokens - 1])))
            target.eval(out[-1:])
        draft.reset()
        draft.eval(out)
        first = len(ids) - 1
        wanted = np.argmax(target.scores[first : len(out) - 1], axis=1)
        same += int((np.argmax(draft.scores[first : len(out) - 1], axis=1) == wanted).sum())
        total += len(wanted)
    return same / total


def test_the_draft_agrees_with_the_target_as_far_as_the_leak_lets_it(tmp_path):
    close = build_draft_pair(tmp_path / "t0.gguf", tmp_path / "d0.gguf", target=TARGET, draft=DRAFT, leak=0.0)
    apart = build_draft_pair(tmp_path / "t1.gguf", tmp_path / "d1.gguf", target=TARGET, draft=DRAFT, leak=1.0)
    assert agreement(*close) >= 0.97  # the same logits (bit for bit on the machines tried): a near-tie at most
    assert agreement(*apart) <= 0.5
