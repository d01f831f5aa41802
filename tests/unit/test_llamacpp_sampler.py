"""Greedy argmax against llama.cpp's own greedy chain, on real logits (models/tiny-chat.gguf)."""

import llama_cpp
import numpy as np
import pytest

from lmgate.backends.llamacpp.config import LlamaCppConfig
from lmgate.backends.llamacpp.llama_model import LlamaModel
from lmgate.backends.llamacpp.sampler import GreedySampler, SamplerChain, build_sampler
from lmgate.backends.types import SamplingParams

PROMPTS = ["Hello", "What does a cow say?", "A dog says woof. A cat says"]


@pytest.fixture(scope="module")
def decoded(tiny_chat_path):
    """A model whose last decode holds each prompt's last-token logits; and their batch indices."""
    model = LlamaModel(LlamaCppConfig(gguf=tiny_chat_path, n_ctx=1024, max_seqs=len(PROMPTS), n_threads=1))
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    prompts = [model.tokenize(p, add_special=True, parse_special=False) for p in PROMPTS]
    entries = [(seq, pos, tok, pos == len(t) - 1) for seq, t in enumerate(prompts) for pos, tok in enumerate(t)]
    for i, (seq, pos, tok, wanted) in enumerate(entries):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, wanted
        batch.seq_id[i][0] = seq
    batch.n_tokens = len(entries)
    assert llama_cpp.llama_decode(model.ctx, batch) == 0
    yield model, [i for i, entry in enumerate(entries) if entry[3]]
    llama_cpp.llama_batch_free(batch)
    model.close()


def logits(model: LlamaModel, i: int) -> np.ndarray:
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(model.ctx, i), shape=(model.n_vocab,)).copy()


def chain_and_argmax(model: LlamaModel, logit_bias=(), banned=frozenset()) -> tuple[SamplerChain, GreedySampler]:
    params = SamplingParams(temperature=0.0, logit_bias=tuple(logit_bias))
    chain = SamplerChain(params, n_vocab=model.n_vocab, seed=0, prompt=[], banned=banned)
    argmax = build_sampler(params, n_vocab=model.n_vocab, seed=0, prompt=[], banned=banned)
    assert isinstance(argmax, GreedySampler)
    return chain, argmax


def test_greedy_argmax_picks_the_token_of_llama_cpps_greedy_chain(decoded):
    decoded, rows = decoded
    for i in rows:
        row = logits(decoded, i)
        best, second = np.argsort(-row, kind="stable")[:2]
        worst = int(row.argmin())
        cases = {
            "plain": ((), frozenset()),
            "best banned": ((), frozenset({int(best)})),
            "worst lifted": (((worst, float(row[best] - row[worst]) + 1.0),), frozenset()),
            "best lowered a little": (((int(best), -float(row[best] - row[second]) / 2),), frozenset()),
            "best lowered below the second": (((int(best), -float(row[best] - row[second]) - 1.0),), frozenset()),
        }
        picked = {}
        for name, (bias, banned) in cases.items():
            chain, argmax = chain_and_argmax(decoded, bias, banned)
            picked[name] = argmax.sample(decoded.ctx, i)
            assert picked[name] == chain.sample(decoded.ctx, i), name
            chain.close()
        assert picked["plain"] == best == picked["best lowered a little"]
        assert picked["best banned"] == second == picked["best lowered below the second"]
        assert picked["worst lifted"] == worst
        np.testing.assert_array_equal(logits(decoded, i), row)  # the biases touch a copy, not llama.cpp's logits


def test_penalties_and_temperature_keep_the_chain():
    for params in (
        SamplingParams(temperature=0.0, repetition_penalty=1.1),
        SamplingParams(temperature=0.0, presence_penalty=0.5),
        SamplingParams(temperature=0.7),
    ):
        sampler = build_sampler(params, n_vocab=10, seed=0, prompt=[1, 2], banned=frozenset())
        assert isinstance(sampler, SamplerChain)
        sampler.close()


def test_on_a_tie_greedy_argmax_picks_the_first_token_as_llama_cpps_chain(decoded):
    """Real logits never tie: two are made equal in place (as a structured output's mask writes there)."""
    decoded, rows = decoded
    i = rows[0]
    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(decoded.ctx, i), shape=(decoded.n_vocab,))
    saved = row.copy()
    try:
        row[[700, 300]] = row.max() + 1.0
        chain, argmax = chain_and_argmax(decoded)
        assert argmax.sample(decoded.ctx, i) == chain.sample(decoded.ctx, i) == 300
        chain.close()
    finally:
        row[:] = saved
