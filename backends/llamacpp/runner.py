"""Executes a ``SchedulerOutput`` on llama.cpp: one multi-sequence batch, one ``llama_decode``.

Every scheduled chunk goes into the same ``llama_batch`` under its slot's sequence id, with the step's
LoRA adapter (if any) set on the context first, ordered by sequence id when each sequence has a KV stream
of its own (llama.cpp then splits the batch into one micro-batch per run of consecutive ids); logits are
requested only for a chunk's last token when that token is the sequence's last. Each such
sequence then samples from its own chain at its batch index. A chunk with draft tokens
(speculator.py) has them decoded after it, with logits at each: the chain samples position after
position while what it samples equals the draft, so every token is drawn from the model's own
distribution given the tokens before it, with one draw of the chain's generator per token, exactly
as without the draft (seeded output is the same); the first disagreement, or the position after the
last draft, gives the step's final token. Log-probabilities are those of the
raw model distribution (before penalties, temperature and truncation), as vLLM and OpenAI report.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp
import numpy as np

from lmgate.backends.llamacpp.grammar import mask_logits
from lmgate.backends.llamacpp.kv_cache import (
    CopyOp,
    ForgetOp,
    KVIntegrityError,
    MemoryOp,
    RemoveOp,
    RestoreOp,
    ShareOp,
    SpillOp,
)
from lmgate.backends.llamacpp.llama_model import LlamaModel
from lmgate.backends.llamacpp.sampler import Sampler, build_sampler
from lmgate.backends.llamacpp.scheduler import SchedulerOutput
from lmgate.backends.llamacpp.sequence import Sequence
from lmgate.backends.structured_output import consume
from lmgate.backends.types import TokenLogprob, TopLogprob


class DecodeError(RuntimeError):
    """llama_decode failed; the sequences of that batch cannot continue."""


@dataclass(frozen=True, slots=True)
class Sampled:
    """The next token of ``seq`` — or, for a beam, its best candidates (``token_id`` is -1)."""

    seq: Sequence
    token_id: int
    logprob: TokenLogprob | None
    candidates: tuple[tuple[int, float], ...] = ()
    accepted: tuple[int, ...] = ()
    """Draft tokens the sequence took before ``token_id`` (speculative decoding), in order."""


class Runner:
    """Owned by the engine thread."""

    def __init__(self, model: LlamaModel) -> None:
        self.model = model
        n = model.n_batch
        self._batch = llama_cpp.llama_batch_init(n, 0, 1)
        self._tokens = np.ctypeslib.as_array(self._batch.token, shape=(n,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(n,))
        self._n_seq_id = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(n,))
        self._logits = np.ctypeslib.as_array(self._batch.logits, shape=(n,))
        self._n_seq_id[:] = 1
        self._samplers: dict[tuple[str, int], Sampler] = {}
        self._host: dict[int, ctypes.Array[ctypes.c_uint8]] = {}
        """Host copies of cached slots (host_tier.py), by key: llama.cpp's serialised cells."""
        self._by_slot = model.stream_cells is not None

    def close(self) -> None:
        for chain in self._samplers.values():
            chain.close()
        self._samplers.clear()
        self._host.clear()
        llama_cpp.llama_batch_free(self._batch)

    def apply(self, ops: tuple[MemoryOp, ...]) -> None:
        """Apply the KV manager's removals, shares and copies to llama.cpp's cache, in order."""
        memory = self.model.memory
        for op in ops:
            if isinstance(op, RemoveOp):
                llama_cpp.llama_memory_seq_rm(memory, op.slot, op.from_pos, -1)
            elif isinstance(op, ShareOp):
                llama_cpp.llama_memory_seq_cp(memory, op.src, op.dst, 0, op.num_tokens)
            elif isinstance(op, SpillOp):
                self._host[op.key] = self._save(op.slot)
            elif isinstance(op, RestoreOp):
                self._load(self._host.pop(op.key), op.slot)
            elif isinstance(op, CopyOp):
                self._load(self._save(op.src), op.dst)
                llama_cpp.llama_memory_seq_rm(memory, op.dst, op.num_tokens, -1)
            elif isinstance(op, ForgetOp):
                self._host.pop(op.key, None)

    def _save(self, slot: int) -> ctypes.Array[ctypes.c_uint8]:
        """llama.cpp's serialised cells of ``slot``."""
        size: int = llama_cpp.llama_state_seq_get_size(self.model.ctx, slot)  # the bindings return Any
        data = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(self.model.ctx, data, size, slot) != size:
            raise KVIntegrityError(f"llama.cpp did not write the {size} bytes of slot {slot}")
        return data

    def _load(self, data: ctypes.Array[ctypes.c_uint8], slot: int) -> None:
        """Put serialised cells into ``slot``, which holds nothing. llama.cpp finds the cells itself; the
        manager has checked that enough are free."""
        if llama_cpp.llama_state_seq_set_data(self.model.ctx, data, len(data), slot) != len(data):
            raise KVIntegrityError(f"llama.cpp could not put {len(data)} bytes of cells into slot {slot}")

    def execute(self, output: SchedulerOutput) -> list[Sampled]:
        """Decode the scheduled chunks; sample for the chunks that end their sequence."""
        self.apply(output.memory_ops)
        if not output.chunks:
            return []
        to_sample = self._fill_batch(output)
        self.model.loras.activate(output.adapter)  # one adapter per decode: scheduler.py
        rc = llama_cpp.llama_decode(self.model.ctx, self._batch)
        if rc != 0:
            raise DecodeError(f"llama_decode returned {rc} for {output.num_tokens} tokens")
        return [self._verify(seq, i, draft) if draft else self._sample(seq, i) for seq, i, draft in to_sample]

    def release(self, seq: Sequence) -> None:
        """The sequence is done: free its sampler chain."""
        chain = self._samplers.pop(seq.key, None)
        if chain is not None:
            chain.close()

    def host_keys(self) -> set[int]:
        """The keys of the host copies the runner holds bytes for."""
        return set(self._host)

    def cached_tokens(self, slot: int) -> int:
        """Tokens llama.cpp holds for ``slot`` (its highest position + 1)."""
        pos_max: int = llama_cpp.llama_memory_seq_pos_max(self.model.memory, slot)  # the bindings return Any
        return pos_max + 1

    def _fill_batch(self, output: SchedulerOutput) -> list[tuple[Sequence, int, tuple[int, ...]]]:
        """Put every chunk (and its draft) in the batch; (sequence, batch index of its last token, draft)
        for each chunk that samples."""
        batch, i = self._batch, 0
        to_sample: list[tuple[Sequence, int, tuple[int, ...]]] = []
        chunks = sorted(output.chunks, key=lambda c: c.seq.slot or 0) if self._by_slot else output.chunks
        for chunk in chunks:
            seq, end, draft = chunk.seq, chunk.start + chunk.length, chunk.draft
            n = chunk.length + len(draft)
            assert seq.slot is not None
            self._tokens[i : i + chunk.length] = seq.token_ids[chunk.start : end]
            self._tokens[i + chunk.length : i + n] = draft
            self._pos[i : i + n] = np.arange(chunk.start, chunk.start + n)
            self._logits[i : i + n] = 0
            for j in range(i, i + n):
                batch.seq_id[j][0] = seq.slot
            i += n
            if chunk.samples:
                self._logits[i - 1 - len(draft) : i] = 1
                to_sample.append((seq, i - 1 - len(draft), draft))
        batch.n_tokens = i
        return to_sample

    def _verify(self, seq: Sequence, batch_index: int, draft: tuple[int, ...]) -> Sampled:
        """Sample at ``batch_index`` onwards while the samples equal ``draft`` (no logprobs, no
        structured output, no beams here: speculator.py keeps those sequences off drafts)."""
        chain = self._chain(seq)
        ctx = self.model.ctx
        for j, proposed in enumerate(draft):
            token_id = chain.sample(ctx, batch_index + j)
            if token_id != proposed:
                return Sampled(seq, token_id, None, accepted=draft[:j])
        return Sampled(seq, chain.sample(ctx, batch_index + len(draft)), None, accepted=draft)

    def _chain(self, seq: Sequence) -> Sampler:
        chain = self._samplers.get(seq.key)
        if chain is None:
            chain = self._samplers[seq.key] = build_sampler(
                seq.sampling,
                n_vocab=self.model.n_vocab,
                seed=seq.sampling.choice_seed(seq.index),
                prompt=seq.token_ids[: seq.num_prompt_tokens],
                banned=self.model.eog_ids if seq.sampling.ignore_eos else frozenset(),
            )
        return chain

    def _sample(self, seq: Sequence, batch_index: int) -> Sampled:
        if seq.beam is not None:
            return Sampled(seq, -1, None, self._top_logprobs(batch_index, 2 * seq.beam.width))
        chain = self._chain(seq)
        # Log-probabilities are the model's own: read before a structured output's mask.
        logprobs = self._log_softmax(batch_index) if seq.sampling.logprobs is not None else None
        if seq.matcher is not None:
            mask_logits(seq.matcher, self._raw_logits(batch_index))
        token_id = chain.sample(self.model.ctx, batch_index)
        if seq.matcher is not None and not consume(seq.matcher, token_id):
            seq.matcher = None
        logprob = None
        if logprobs is not None and seq.sampling.logprobs is not None:
            logprob = self._logprobs(logprobs, token_id, seq.sampling.logprobs)
        return Sampled(seq, token_id, logprob)

    def _raw_logits(self, batch_index: int) -> np.ndarray:
        """The row of llama.cpp's logits at ``batch_index``, in place (writes change what is sampled)."""
        ptr = llama_cpp.llama_get_logits_ith(self.model.ctx, batch_index)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def _log_softmax(self, batch_index: int) -> np.ndarray:
        logits = self._raw_logits(batch_index).astype(np.float64)
        peak = logits.max()
        log_probs: np.ndarray = logits - (peak + np.log(np.exp(logits - peak).sum()))  # numpy's arithmetic is Any here
        return log_probs

    def _top_logprobs(self, batch_index: int, top_n: int) -> tuple[tuple[int, float], ...]:
        return _best(self._log_softmax(batch_index), top_n)

    def _logprobs(self, logprobs: np.ndarray, token_id: int, top_n: int) -> TokenLogprob:
        top = tuple(self._entry(t, lp) for t, lp in _best(logprobs, top_n)) if top_n > 0 else ()
        chosen = self._entry(token_id, float(logprobs[token_id]))
        return TokenLogprob(chosen.token_id, chosen.token, chosen.logprob, chosen.bytes, top)

    def _entry(self, token_id: int, logprob: float) -> TopLogprob:
        piece = self.model.pieces[token_id]
        text = piece.decode("utf-8", errors="replace") if piece else self.model.token_text(token_id)
        return TopLogprob(token_id, text, logprob, piece)


def _best(logprobs: np.ndarray, top_n: int) -> tuple[tuple[int, float], ...]:
    """The ``top_n`` most likely tokens and their log-probabilities, best first."""
    best = np.argpartition(-logprobs, top_n - 1)[:top_n]
    best = best[np.argsort(-logprobs[best], kind="stable")]
    return tuple((int(t), float(logprobs[t])) for t in best)
