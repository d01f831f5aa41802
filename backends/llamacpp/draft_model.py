"""A draft model: a smaller GGUF with the model's vocabulary proposes draft tokens greedily.

It has its own llama.cpp context (the same number of cells as the model's, a unified cache) and one
sequence id per sequence it drafts for, holding the KV of a prefix of that sequence's tokens plus
the drafts it decoded last time. Each ``propose`` first brings every sequence's draft KV in step with
its tokens (the positions after the first token that differs, a rejected draft, are removed; the
new tokens, the whole prompt the first time, are decoded in batches across sequences), then decodes
one greedy token per sequence and round, ``limit`` rounds, all sequences in one batch per round.
When its context cannot take a batch (cells short), the sequences of that batch lose their draft
state and get no draft this step; the model's decoding never waits on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from lmgate.backends.errors import ModelLoadError
from lmgate.backends.llamacpp.config import LlamaCppConfig
from lmgate.backends.llamacpp.llama_model import LlamaModel
from lmgate.backends.llamacpp.sequence import Sequence

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class _State:
    seq_id: int
    tokens: list[int] = field(default_factory=list)
    """Tokens whose KV the draft context holds for this sequence, positions 0..len-1."""
    matched: int = 0
    """Leading ``tokens`` known to equal the sequence's."""


class _DecodeFailed(Exception):
    pass


class DraftModelDrafter:
    """Owned by the engine thread; ``close()`` frees the draft model."""

    def __init__(self, path: Path, target: LlamaModel, config: LlamaCppConfig) -> None:
        if not path.is_file():
            raise ModelLoadError(f"draft model GGUF not found: {path} (check the model's `speculative.draft_model`)")
        params = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise ModelLoadError(f"llama.cpp could not load the draft model {path}: not a GGUF model it supports")
        self.ctx = None
        try:
            self._vocab = llama_cpp.llama_model_get_vocab(self.model)
            _check_vocab(path, self._vocab, target)
            self.n_vocab: int = target.n_vocab
            self.ctx = llama_cpp.llama_init_from_model(self.model, self._context_params(target, config))
            if not self.ctx:
                raise ModelLoadError(f"llama.cpp could not create a context for draft model {path} (out of memory?)")
        except BaseException:
            self.close()
            raise
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_batch = target.n_batch
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._tokens = np.ctypeslib.as_array(self._batch.token, shape=(self.n_batch,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(self.n_batch,))
        self._n_seq_id = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(self.n_batch,))
        self._logits = np.ctypeslib.as_array(self._batch.logits, shape=(self.n_batch,))
        self._n_seq_id[:] = 1
        self._p_min = config.speculative.draft_p_min
        self._free = list(range(config.max_seqs - 1, -1, -1))
        self._states: dict[tuple[str, int], _State] = {}

    @staticmethod
    def _context_params(target: LlamaModel, config: LlamaCppConfig) -> llama_cpp.llama_context_params:
        params: llama_cpp.llama_context_params = llama_cpp.llama_context_default_params()  # the bindings return Any
        params.n_ctx = target.n_ctx
        params.n_batch = target.n_batch
        params.n_ubatch = min(config.n_ubatch, config.n_batch)
        params.n_seq_max = config.max_seqs
        params.n_threads = config.n_threads
        params.n_threads_batch = config.n_threads_batch or config.n_threads
        params.kv_unified = True
        params.no_perf = True
        return params

    def propose(self, seqs: list[Sequence], limits: list[int]) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in seqs]
        limits = list(limits)  # a draft that ends early (an unsure token) gets its length as its limit
        work: list[tuple[int, Sequence, _State]] = []
        for row, (seq, limit) in enumerate(zip(seqs, limits, strict=True)):
            state = self._state(seq) if limit > 0 else None
            if state is not None:
                work.append((row, seq, state))
        try:
            self._catch_up(work, drafts, limits)
            for _ in range(1, max((limits[row] for row, _, _ in work), default=0)):
                work = [w for w in work if len(drafts[w[0]]) < limits[w[0]]]
                if not work:
                    break
                self._round([(row, state) for row, _, state in work], drafts, limits)
        except _DecodeFailed:
            log.warning("the draft model's context is full: %d sequence(s) speculate again from scratch", len(work))
            for _, seq, _ in work:
                self._forget(seq)
            return [[] for _ in seqs]
        return drafts

    def release(self, seq: Sequence) -> None:
        self._forget(seq)

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None

    def _state(self, seq: Sequence) -> _State | None:
        state = self._states.get(seq.key)
        if state is None and self._free:
            state = self._states[seq.key] = _State(self._free.pop())
        return state

    def _forget(self, seq: Sequence) -> None:
        state = self._states.pop(seq.key, None)
        if state is not None:
            llama_cpp.llama_memory_seq_rm(self.memory, state.seq_id, 0, -1)
            self._free.append(state.seq_id)

    def _catch_up(self, work: list[tuple[int, Sequence, _State]], drafts: list[list[int]], limits: list[int]) -> None:
        """Bring each state in step with its sequence's tokens and draft its first token (into ``drafts[row]``)."""
        wanted: list[tuple[int, int]] = []  # (draft row, batch index) of the batch being filled
        n = 0
        for row, seq, state in work:
            new = self._sync(seq.token_ids, state)
            for j, token in enumerate(new):
                if n == self.n_batch:
                    self._decode(n, wanted, drafts, limits)
                    wanted, n = [], 0
                last = j == len(new) - 1
                self._put(n, state.seq_id, token, len(state.tokens), last)
                state.tokens.append(token)
                if last:
                    wanted.append((row, n))
                n += 1
            state.matched = len(state.tokens)
        self._decode(n, wanted, drafts, limits)

    def _sync(self, tokens: list[int], state: _State) -> list[int]:
        """Drop the state's positions from the first that differs from ``tokens``; the tokens to decode
        (at least the last one, whose logits give the first draft token)."""
        limit = min(len(state.tokens), len(tokens) - 1)
        same = min(state.matched, limit)
        while same < limit and state.tokens[same] == tokens[same]:
            same += 1
        if same < len(state.tokens):
            llama_cpp.llama_memory_seq_rm(self.memory, state.seq_id, same, -1)
            del state.tokens[same:]
        state.matched = same
        return tokens[same:]

    def _decode(self, n: int, wanted: list[tuple[int, int]], drafts: list[list[int]], limits: list[int]) -> None:
        """Decode the batch's ``n`` tokens; append the greedy token at each wanted (draft row, batch index) to
        that draft, and end a draft (its limit becomes its length) after a token below ``_p_min``."""
        if n == 0:
            return
        self._batch.n_tokens = n
        if llama_cpp.llama_decode(self.ctx, self._batch) != 0:
            raise _DecodeFailed
        for row, index in wanted:
            token, sure = self._greedy(index)
            drafts[row].append(token)
            if not sure:
                limits[row] = len(drafts[row])

    def _round(self, work: list[tuple[int, _State]], drafts: list[list[int]], limits: list[int]) -> None:
        """Decode the last draft token of each (draft row, state); append the next greedy token to each draft."""
        for n, (row, state) in enumerate(work):
            self._put(n, state.seq_id, drafts[row][-1], len(state.tokens), True)
            state.tokens.append(drafts[row][-1])
        self._decode(len(work), [(row, n) for n, (row, _) in enumerate(work)], drafts, limits)

    def _put(self, n: int, seq_id: int, token: int, pos: int, logits: bool) -> None:
        self._tokens[n] = token
        self._pos[n] = pos
        self._logits[n] = logits
        self._batch.seq_id[n][0] = seq_id

    def _greedy(self, batch_index: int) -> tuple[int, bool]:
        """The most likely token at ``batch_index``, and whether its probability is ``_p_min`` or more."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, batch_index)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        token = int(logits.argmax())
        if self._p_min == 0.0:
            return token, True
        # softmax(logits)[token] = 1 / sum(exp(logits - logits[token]))
        return token, float(np.exp(logits - logits[token]).sum()) <= 1.0 / self._p_min


def _check_vocab(path: Path, vocab: llama_cpp.llama_vocab_p, target: LlamaModel) -> None:
    """Raise ``ModelLoadError`` unless the draft's vocabulary is the model's, token by token."""
    n_vocab: int = llama_cpp.llama_vocab_n_tokens(vocab)  # the bindings return Any
    if n_vocab != target.n_vocab:
        raise ModelLoadError(
            f"draft model {path.name} has {n_vocab} tokens, the model {target.n_vocab}: a draft model needs the "
            "same vocabulary (the same tokenizer)"
        )
    for token in range(n_vocab):
        text: bytes = llama_cpp.llama_vocab_get_text(vocab, token)
        if text != llama_cpp.llama_vocab_get_text(target.vocab, token):
            raise ModelLoadError(
                f"draft model {path.name} differs from the model at token {token} ({text!r}): a draft model "
                "needs the same vocabulary (the same tokenizer)"
            )
