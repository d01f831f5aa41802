"""Per-sequence samplers built from ``SamplingParams``: llama.cpp's sampler chains, and greedy argmax.

The chain mirrors llama-server's order: logit bias, penalties, then top-k, top-p, min-p,
temperature and a seeded distribution; ``temperature == 0`` ends in the greedy sampler instead.
``llama_sampler_sample`` accepts the sampled token, so the penalties see every output token; the
prompt is accepted once at creation, as llama-server does, so the repetition penalty sees it too.

Greedy decoding without penalties needs no chain: ``GreedySampler`` reads the highest logit (after
the biases) straight from llama.cpp's logits, the token llama.cpp's greedy sampler picks, in ~5 µs
instead of the chain's ~55 µs (bench-200m's 32,000 tokens on this project's 2-core host:
``llama_sampler_sample`` first copies the whole vocabulary into a candidate array). The benchmark's
requests and most API clients' ``temperature: 0`` take this path, once per sequence per step.
"""

from __future__ import annotations

import math

import llama_cpp
import numpy as np

from lmgate.backends.types import SamplingParams


class SamplerChain:
    """One sequence's chain; owned by the engine thread; ``close()`` frees it."""

    def __init__(
        self, params: SamplingParams, *, n_vocab: int, seed: int, prompt: list[int], banned: frozenset[int]
    ) -> None:
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        bias = _biases(params, banned)
        if bias:
            self._add(_logit_bias(n_vocab, bias))
        if _penalised(params):
            self._add(
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab,
                    params.penalty_last_n,
                    params.repetition_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
        if params.greedy:
            self._add(llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                self._add(llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                self._add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                self._add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            self._add(llama_cpp.llama_sampler_init_temp(params.temperature))
            self._add(llama_cpp.llama_sampler_init_dist(seed))
        for token in prompt:
            llama_cpp.llama_sampler_accept(self._chain, token)

    def _add(self, sampler: llama_cpp.llama_sampler_p) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, ctx: llama_cpp.llama_context_p, batch_index: int) -> int:
        """Sample from the logits of ``batch_index`` in the last decode, and accept the token."""
        token: int = llama_cpp.llama_sampler_sample(self._chain, ctx, batch_index)  # the bindings return Any
        return token

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


class GreedySampler:
    """Greedy decoding without penalties: the first highest logit after the biases (llama.cpp's greedy
    sampler breaks ties the same way, and adds a bias to a float32 logit the same way). Stateless:
    nothing to accept, nothing to free."""

    def __init__(self, *, n_vocab: int, bias: dict[int, float]) -> None:
        self._n_vocab = n_vocab
        self._ids = np.fromiter(bias, dtype=np.intp, count=len(bias))
        self._bias = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        self._biased = frozenset(bias)
        self._raises = bool((self._bias > 0).any())
        """A positive bias can lift any token above the argmax; else only a biased argmax can change."""

    def sample(self, ctx: llama_cpp.llama_context_p, batch_index: int) -> int:
        """The greedy token from the logits of ``batch_index`` in the last decode."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, batch_index), shape=(self._n_vocab,))
        token = int(logits.argmax())
        if self._raises or token in self._biased:
            biased = logits.copy()
            biased[self._ids] += self._bias
            token = int(biased.argmax())
        return token

    def close(self) -> None:
        """Nothing to free."""


Sampler = SamplerChain | GreedySampler


def build_sampler(
    params: SamplingParams, *, n_vocab: int, seed: int, prompt: list[int], banned: frozenset[int]
) -> Sampler:
    """The sampler for one sequence: greedy argmax where no penalty needs the chain's history, else a chain.
    ``banned`` tokens are never sampled (``ignore_eos``: the end-of-generation tokens)."""
    if params.greedy and not _penalised(params):
        return GreedySampler(n_vocab=n_vocab, bias=_biases(params, banned))
    return SamplerChain(params, n_vocab=n_vocab, seed=seed, prompt=prompt, banned=banned)


def _biases(params: SamplingParams, banned: frozenset[int]) -> dict[int, float]:
    bias = dict(params.logit_bias)
    bias.update(dict.fromkeys(banned, -math.inf))
    return bias


def _penalised(params: SamplingParams) -> bool:
    return (params.repetition_penalty, params.frequency_penalty, params.presence_penalty) != (1.0, 0.0, 0.0)


def _logit_bias(n_vocab: int, bias: dict[int, float]) -> llama_cpp.llama_sampler_p:
    entries = (llama_cpp.llama_logit_bias * len(bias))(*(llama_cpp.llama_logit_bias(t, b) for t, b in bias.items()))
    sampler: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), entries)
    return sampler
