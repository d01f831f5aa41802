"""Per-sequence llama.cpp sampler chains built from ``SamplingParams``.

The chain mirrors llama-server's order: logit bias, penalties, then top-k, top-p, min-p,
temperature and a seeded distribution; ``temperature == 0`` ends in the greedy sampler instead.
``llama_sampler_sample`` accepts the sampled token, so the penalties see every output token; the
prompt is accepted once at creation, as llama-server does, so the repetition penalty sees it too.
"""

from __future__ import annotations

import llama_cpp

from lmgate.backends.types import SamplingParams


class SamplerChain:
    """One sequence's chain; owned by the engine thread; ``close()`` frees it."""

    def __init__(
        self, params: SamplingParams, *, n_vocab: int, seed: int, prompt: list[int], banned: frozenset[int]
    ) -> None:
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        bias = dict(params.logit_bias)
        bias.update(dict.fromkeys(banned, float("-inf")))
        if bias:
            self._add(_logit_bias(n_vocab, bias))
        if (params.repetition_penalty, params.frequency_penalty, params.presence_penalty) != (1.0, 0.0, 0.0):
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


def _logit_bias(n_vocab: int, bias: dict[int, float]) -> llama_cpp.llama_sampler_p:
    entries = (llama_cpp.llama_logit_bias * len(bias))(*(llama_cpp.llama_logit_bias(t, b) for t, b in bias.items()))
    sampler: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), entries)
    return sampler
