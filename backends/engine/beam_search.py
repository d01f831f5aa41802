"""Beam search as a policy: which beams continue with which token, and when the search is over.

No llama.cpp here. Each step the engine hands in, for every live beam, its best next tokens with
their log-probabilities; ``step`` keeps the ``width`` best continuations over all beams (a beam
may continue several ways: the engine forks it with ``llama_memory_seq_cp``, so the shared prefix
is not copied), turns end tokens into finished hypotheses and reports which beams died. The
search ends when every beam finished or hit ``max_tokens``, or early, once ``width`` hypotheses
finished and no live beam can still beat the worst of them (HF's ``early_stopping=True``).
Hypotheses are ranked by ``cum_logprob / length ** length_penalty`` (HF, vLLM).
The search is generic over ``K``, the engine's handle on a beam's sequence (the llama.cpp engine
keys beams by their ``Sequence``; engines that keep beams by batch row use ``BeamSearch[None]``).
``final_deltas`` turns the best ones into a request's last deltas, the same way for every engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from lmgate.backends.engine.output_text import OutputText
from lmgate.backends.types import FinishReason, TokenDelta, Usage

K = TypeVar("K")


@dataclass(eq=False)
class Beam(Generic[K]):
    """A live beam: the output tokens so far and their summed log-probability."""

    output: list[int]
    logprob: float = 0.0
    key: K | None = None  # the engine's handle on the beam's sequence; None for a fork not made yet


@dataclass(frozen=True)
class Hypothesis:
    output: tuple[int, ...]
    logprob: float
    score: float
    finish_reason: FinishReason


@dataclass(frozen=True)
class Continuation(Generic[K]):
    """Beam ``parent`` continues with ``token``: the first continuation of a parent reuses its
    sequence, the others fork it."""

    parent: Beam[K]
    token: int
    logprob: float


@dataclass
class BeamSearch(Generic[K]):
    width: int
    n: int
    max_tokens: int
    end_tokens: frozenset[int]
    length_penalty: float = 1.0
    live: list[Beam[K]] = field(default_factory=list)
    finished: list[Hypothesis] = field(default_factory=list)
    root: K | None = None  # the engine's handle on the prompt's sequence
    closed: bool = False
    pending: dict[int, tuple[tuple[int, float], ...]] = field(default_factory=dict)
    """Candidates of beams decoded this round, by id(beam), until every live beam has some."""

    def __post_init__(self) -> None:
        if not 1 <= self.n <= self.width:
            raise ValueError(f"need 1 <= n <= width, got n={self.n} width={self.width}")
        if not self.live:
            self.live = [Beam([])]

    def score(self, logprob: float, length: int) -> float:
        return logprob / float(max(length, 1) ** self.length_penalty)

    def step(self, candidates: Mapping[int, Sequence[tuple[int, float]]]) -> list[Continuation[K]]:
        """``candidates``: id(beam) → [(token, logprob)] for every live beam, best first (2 × width
        of them, so that ends among them still leave ``width`` continuations).

        Returns the continuations that stay live (at most ``width``), in the order of the new
        ``live`` list; a parent's first continuation keeps its ``key``, later ones get None (forks).
        End tokens and continuations reaching ``max_tokens`` become hypotheses instead.
        """
        ranked = sorted(
            ((beam.logprob + lp, beam, token, lp) for beam in self.live for token, lp in candidates[id(beam)]),
            key=lambda c: c[0],
            reverse=True,
        )
        chosen: list[Continuation[K]] = []
        for rank, (total, beam, token, lp) in enumerate(ranked):
            if len(chosen) == self.width:
                break
            if token in self.end_tokens:
                if rank < self.width:  # an end among the best `width` candidates finishes a hypothesis
                    self._finish(beam.output, total, FinishReason.STOP)
            elif len(beam.output) + 1 >= self.max_tokens:
                self._finish([*beam.output, token], total, FinishReason.LENGTH)
            else:
                chosen.append(Continuation(beam, token, lp))
        self.live = []
        for c in chosen:
            first = not any(b.key is c.parent.key and b.key is not None for b in self.live)
            self.live.append(
                Beam([*c.parent.output, c.token], c.parent.logprob + c.logprob, c.parent.key if first else None)
            )
        return chosen

    @property
    def done(self) -> bool:
        if not self.live:
            return True
        if len(self.finished) < self.width:
            return False
        # A live beam's score can only fall as it grows when length_penalty <= 0; otherwise compare
        # against the best it could reach at max_tokens (log-probabilities only decrease).
        worst = min(h.score for h in self.finished)
        best_live = max(self.score(b.logprob, self.max_tokens if self.length_penalty > 0 else len(b.output))
                        for b in self.live)  # fmt: skip
        return best_live <= worst

    def best(self) -> list[Hypothesis]:
        """The ``n`` best hypotheses; live beams count as unfinished (``length``) when the search stops early."""
        pool = self.finished + [
            Hypothesis(tuple(b.output), b.logprob, self.score(b.logprob, len(b.output)), FinishReason.LENGTH)
            for b in self.live
        ]
        return sorted(pool, key=lambda h: h.score, reverse=True)[: self.n]

    def _finish(self, output: list[int], logprob: float, reason: FinishReason) -> None:
        self.finished.append(Hypothesis(tuple(output), logprob, self.score(logprob, len(output)), reason))
        self.finished.sort(key=lambda h: h.score, reverse=True)
        del self.finished[self.width :]


def final_deltas(best: list[Hypothesis], to_bytes: Callable[[Sequence[int]], bytes], stop: tuple[str, ...],
                 usage: Callable[[int], Usage]) -> list[TokenDelta]:  # fmt: skip
    """One final delta per hypothesis (index = rank): its whole text, cut at a stop string (which
    makes it a ``stop``), and ``usage(completion_tokens)``."""
    deltas = []
    for index, hypothesis in enumerate(best):
        text = OutputText(stop)
        body = text.append(to_bytes(hypothesis.output)) + text.finish()
        reason = FinishReason.STOP if text.stopped else hypothesis.finish_reason
        usage_ = usage(len(hypothesis.output))
        deltas.append(TokenDelta(index, body, hypothesis.output, finish_reason=reason, usage=usage_))
    return deltas
