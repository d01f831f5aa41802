"""Choosing the next token from a row of logits with ``SamplingParams``, in torch.

The order is llama-server's (and the llamacpp backend's): logit bias, repetition / frequency /
presence penalties over the last ``penalty_last_n`` tokens (prompt included), a structured output's
mask (backends/structured_output.py), then top-k, top-p and min-p on the untempered distribution,
temperature, and a draw from the row's own seeded generator;
``temperature == 0`` takes the arg-max instead. Log-probabilities are the model's own (before any
of this), as vLLM and OpenAI report them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lmgate.backends.structured_output import allowed, consume
from lmgate.backends.types import SamplingParams

if TYPE_CHECKING:
    from llguidance import LLMatcher


@dataclass(frozen=True, slots=True)
class Choice:
    token_id: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()
    """The ``logprobs`` most likely tokens and their log-probabilities, best first."""


class RowSampler:
    """One sequence's sampling state: its parameters, its generator and its banned ids."""

    def __init__(
        self, params: SamplingParams, *, seed: int, banned: frozenset[int], matcher: LLMatcher | None = None
    ) -> None:
        self.params = params
        self.matcher = matcher
        """The row's structured output (None: free text), fed every token it samples."""
        self._generator = torch.Generator().manual_seed(seed)
        bias = dict(params.logit_bias)
        bias.update(dict.fromkeys(banned, float("-inf")))
        self._bias_ids = torch.tensor(list(bias), dtype=torch.long)
        self._bias_values = torch.tensor(list(bias.values()), dtype=torch.float32)

    def sample(self, logits: torch.Tensor, history: list[int]) -> Choice:
        """Pick a token from ``logits`` (``[vocab]``, float32) given the tokens so far."""
        p = self.params
        x = logits.clone()
        if len(self._bias_ids):
            x[self._bias_ids] += self._bias_values
        if (p.repetition_penalty, p.frequency_penalty, p.presence_penalty) != (1.0, 0.0, 0.0) and p.penalty_last_n:
            _penalize(x, history[-p.penalty_last_n :] if p.penalty_last_n > 0 else history, p)  # -1: all of it
        if self.matcher is not None:
            x[~torch.from_numpy(allowed(self.matcher, x.shape[-1]))] = float("-inf")
        token = int(torch.argmax(x)) if p.greedy else self._draw(x)
        if self.matcher is not None and not consume(self.matcher, token):
            self.matcher = None
        if p.logprobs is None:
            return Choice(token)
        logprobs = torch.log_softmax(logits, dim=-1)
        top = torch.topk(logprobs, p.logprobs) if p.logprobs else None
        ranked = tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else ()
        return Choice(token, float(logprobs[token]), ranked)

    def _draw(self, x: torch.Tensor) -> int:
        p = self.params
        if 0 < p.top_k < x.shape[-1]:
            kth = torch.topk(x, p.top_k).values[-1]
            x[x < kth] = float("-inf")
        if p.top_p < 1.0:
            sorted_x, order = torch.sort(x, descending=True, stable=True)  # ties: lowest id first, as argmax
            probs = torch.softmax(sorted_x, dim=-1)
            before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked above each one
            drop = before >= p.top_p
            drop[0] = False
            x[order[drop]] = float("-inf")
        if p.min_p > 0.0:
            probs = torch.softmax(x, dim=-1)
            x[probs < p.min_p * probs.max()] = float("-inf")
        probs = torch.softmax(x / p.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self._generator))


def _penalize(x: torch.Tensor, window: list[int], p: SamplingParams) -> None:
    ids, counts = torch.unique(torch.tensor(window, dtype=torch.long), return_counts=True)
    ids_in = ids < x.shape[-1]
    ids, counts = ids[ids_in], counts[ids_in]
    seen = x[ids]
    if p.repetition_penalty != 1.0:
        seen = torch.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
    seen = seen - counts.to(x.dtype) * p.frequency_penalty - p.presence_penalty
    x[ids] = seen
