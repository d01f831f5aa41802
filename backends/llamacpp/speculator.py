"""Which decoding sequences speculate this step, and with which draft tokens: policy over a drafter.

After the scheduler has chosen the step's chunks, each sequence that decodes one token may add up
to ``num_draft`` draft tokens to its chunk; the runner decodes them in the same batch and samples
each position with the sequence's own chain, keeping drafts while they equal what it samples
(runner.py). It applies only while few sequences decode (``max_batch``: on a CPU a bigger batch
already uses the compute that verification costs; with a KV stream per sequence, only while one does:
llama.cpp splits a multi-stream batch into micro-batches of equal tokens per sequence, so each drafting
sequence would cost an evaluation of the whole model of its own), within the step's token budget, and in cells
that are free: a draft never preempts or evicts anything. Sequences of a beam search, with a
structured output or asking for log-probabilities decode without drafts, and so does a request
that sent ``speculative: false``. A draft never runs past ``max_tokens`` or the context: the last
token a step may emit is the one sampled after the accepted drafts.

How many draft tokens a sequence may take adapts to how its drafts fare (the "heuristic" schedule
of Hugging Face's assisted generation, with a floor of none): two more after a draft it took whole,
one fewer after one it rejected any of, between 0 and ``num_draft``. A sequence at 0 drafts nothing
for ``PROBE_STEPS`` steps, then tries one token again. Drafts that keep failing cost a decoding step
the extra positions for nothing (at c=4 on a random model's text, a fixed 4-token draft halved the
throughput); drafts that keep being taken grow to the limit.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from lmgate.backends.llamacpp.kv_manager import KVManager
from lmgate.backends.llamacpp.ngram import NgramIndex
from lmgate.backends.llamacpp.scheduler import ScheduledChunk, SchedulerOutput
from lmgate.backends.llamacpp.sequence import Sequence
from lmgate.backends.llamacpp.speculative_config import SpeculativeConfig

if TYPE_CHECKING:
    from lmgate.backends.llamacpp.config import LlamaCppConfig
    from lmgate.backends.llamacpp.llama_model import LlamaModel


PROBE_STEPS = 16
"""Steps a sequence whose draft length fell to 0 decodes without drafts before it tries one token."""


def build(settings: LlamaCppConfig, model: LlamaModel, kv: KVManager) -> Speculator | None:
    """The model's speculator; None when speculation is off. Raises ``ModelLoadError`` for a draft
    model that cannot be loaded or whose vocabulary is not the model's."""
    config = settings.speculative
    drafter: Drafter
    match config.method:
        case "none":
            return None
        case "ngram":
            drafter = NgramDrafter(config.ngram_min, config.ngram_max)
        case "draft":
            from lmgate.backends.llamacpp.draft_model import DraftModelDrafter  # loads llama.cpp objects

            assert config.draft_model is not None  # SpeculativeConfig checks it
            drafter = DraftModelDrafter(config.draft_model, model, settings)
    if model.stream_cells is not None:
        config = config.model_copy(update={"max_batch": 1})
    return Speculator(config, drafter, kv, model.n_batch, model.max_model_len, model.eog_ids)


class Drafter(Protocol):
    """Proposes draft tokens; owned by the engine thread."""

    def propose(self, seqs: list[Sequence], limits: list[int]) -> list[list[int]]:
        """Up to ``limits[i]`` tokens likely to follow ``seqs[i].token_ids``, for every i."""
        ...

    def release(self, seq: Sequence) -> None:
        """``seq`` is finished: forget its state."""
        ...

    def close(self) -> None: ...


class NgramDrafter:
    """Prompt lookup (ngram.py), one incremental index per sequence."""

    def __init__(self, ngram_min: int, ngram_max: int) -> None:
        self._sizes = (ngram_min, ngram_max)
        self._indexes: dict[tuple[str, int], NgramIndex] = {}

    def propose(self, seqs: list[Sequence], limits: list[int]) -> list[list[int]]:
        out = []
        for seq, limit in zip(seqs, limits, strict=True):
            index = self._indexes.get(seq.key)
            if index is None:
                index = self._indexes[seq.key] = NgramIndex(*self._sizes)
            out.append(index.propose(seq.token_ids, limit))
        return out

    def release(self, seq: Sequence) -> None:
        self._indexes.pop(seq.key, None)

    def close(self) -> None:
        self._indexes.clear()


class Speculator:
    """Adds draft tokens to a ``SchedulerOutput``; counts what was drafted and accepted."""

    def __init__(
        self,
        config: SpeculativeConfig,
        drafter: Drafter,
        kv: KVManager,
        token_budget: int,
        max_model_len: int,
        eog_ids: frozenset[int] = frozenset(),
    ) -> None:
        """``eog_ids``: the model's end-of-generation tokens (a draft stops at one: see ``_cut``)."""
        self.config = config
        self._eog_ids = eog_ids
        self.drafter = drafter
        self._kv = kv
        self._budget = token_budget
        self._max_model_len = max_model_len
        self.drafted = 0
        self.accepted = 0
        self._allowed: dict[tuple[str, int], float] = {}
        """Per sequence: draft tokens it may take (the integer part); below 1 it climbs back 1/PROBE_STEPS a step."""

    def extend(self, output: SchedulerOutput) -> SchedulerOutput:
        """``output`` with draft tokens on the chunks that may speculate (their cells reserved)."""
        decoding = [c for c in output.chunks if c.samples]
        if not decoding or len(decoding) > self.config.max_batch:
            return output
        chosen = [(c, limit) for c in decoding if (limit := self._limit(c)) > 0]
        if not chosen:
            return output
        drafts = self.drafter.propose([c.seq for c, _ in chosen], [limit for _, limit in chosen])
        budget = self._budget - output.num_tokens
        extended: dict[int, ScheduledChunk] = {}
        for (chunk, _), draft in zip(chosen, drafts, strict=True):
            assert chunk.seq.slot is not None
            draft = self._cut(draft, chunk.seq)[: min(budget, self._kv.room(chunk.seq.slot))]
            if not draft:
                continue
            if not self._kv.allocate(chunk.seq.slot, len(draft)):  # within its room: no eviction happens
                continue
            extended[id(chunk)] = replace(chunk, draft=tuple(draft))
            budget -= len(draft)
            self.drafted += len(draft)
        if not extended:
            return output
        return replace(output, chunks=tuple(extended.get(id(c), c) for c in output.chunks))

    def observe(self, seq: Sequence, drafted: int, accepted: int) -> None:
        """``seq`` verified ``drafted`` draft tokens this step and took the first ``accepted``."""
        self.accepted += accepted
        allowed = self._allowed.get(seq.key, float(self.config.num_draft))
        allowed = min(float(self.config.num_draft), allowed + 2) if accepted == drafted else max(0.0, allowed - 1)
        self._allowed[seq.key] = allowed

    def release(self, seq: Sequence) -> None:
        self.drafter.release(seq)
        self._allowed.pop(seq.key, None)

    def close(self) -> None:
        self.drafter.close()

    def _cut(self, draft: list[int], seq: Sequence) -> list[int]:
        """``draft`` up to where the sequence cannot follow it: before an end token its sampler may not
        draw (``ignore_eos``), after an end or stop token that would finish it (what follows is waste)."""
        for i, token in enumerate(draft):
            if token in self._eog_ids:
                return draft[:i] if seq.sampling.ignore_eos else draft[: i + 1]
            if token in seq.sampling.stop_token_ids:
                return draft[: i + 1]
        return draft

    def _limit(self, chunk: ScheduledChunk) -> int:
        """Draft tokens ``chunk``'s sequence may take this step (0: it decodes without; a sequence backed off
        to none counts this step towards its next one-token probe)."""
        seq = chunk.seq
        sampling = seq.sampling
        if chunk.length != 1 or sampling.speculative is False or seq.beam is not None or seq.matcher is not None:
            return 0
        if sampling.logprobs is not None:
            return 0
        # The token sampled after k accepted drafts is output token num_output + k + 1: it may be the
        # last one (max_tokens, the context), never beyond.
        room = min(seq.max_tokens - seq.num_output_tokens, self._max_model_len - seq.num_tokens) - 1
        allowed = self._allowed.get(seq.key, float(self.config.num_draft))
        if allowed < 1:
            self._allowed[seq.key] = allowed + 1 / PROBE_STEPS
            return 0
        return max(0, min(int(allowed), room))
