"""Which tokens of which sequences go into the next ``llama_decode``: pure policy, no llama.cpp.

Each step has a token budget (the context's ``n_batch``). Sequences decoding one token come first,
oldest first. Then waiting sequences are admitted in arrival order while a slot is free and their
whole uncomputed prompt fits in the free cells (or cells cached slots can give back); an admitted
sequence starts from the longest prefix the KV cache already holds. What is left of the budget
prefills prompts, in chunks over several steps when a prompt is longer:

- **Fair chunked prefill.** While a step decodes other sequences, it prefills at most
  ``prefill_chunk`` prompt tokens, so a long prompt arriving costs the running streams one short
  step at a time, not one long step (llama-server puts up to ``n_batch`` prompt tokens beside the
  decodes); fewer where that makes the step's tokens fill whole tiles of ggml's flash attention
  (``aligned_prefill``). With a KV stream per sequence, llama.cpp puts a chunk's first token in the
  decodes' micro-batch and the rest in one of its own: that rest is what fills whole tiles, so the
  chunk is one token longer. With nothing decoding, a step prefills up to the whole budget.
- **Shortest prompt first.** The prefill budget goes to the prompts with the fewest tokens left to
  compute, so a short request arriving behind a long prompt starts within a step or two; the oldest
  prompt still gets a quarter of the budget every step, so a stream of short prompts cannot starve it.

With a KV stream per sequence, a step with nothing waiting first lets the KV manager close the gaps
that finished sequences leave between running slots (stream_cache.py, ``pack``): llama.cpp evaluates
the model once per run of consecutive sequence ids.

When a running sequence cannot get cells, the newest running sequence is preempted: its slot becomes
a cached slot (evicted first when cells are short) and it goes back to the front of the queue, to be
recomputed (its tokens are kept) from whatever of its prefix is still cached.

LoRA adapters: llama.cpp applies them per context, so one step decodes the sequences of one adapter
(or of the base model, ``None``) only, as llama-server batches slots of one LoRA configuration
together. Of the adapters with work, the one served least recently goes first (ties: the one whose
oldest sequence is oldest), so base and adapter requests take turns step by step and all make
progress; when that adapter has nothing that can run now (no cells for its queue), the next one is
tried in the same step. Within an adapter, everything above holds (decode first, FIFO admission).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from lmgate.backends.llamacpp.kv_cache import KVIntegrityError, MemoryOp
from lmgate.backends.llamacpp.kv_manager import KVManager
from lmgate.backends.llamacpp.sequence import Sequence, SequenceStatus

ATTENTION_TILE = 64
"""Batch tokens ggml's CPU flash attention computes together as one tile of queries, once a batch has
that many (``GGML_FA_TILE_Q``): a partial tile costs a whole one, so a step of 8 decodes and 128 prompt
tokens pays three tiles of attention where 8 and 120 pay two (docs/performance.md)."""


def aligned_prefill(decodes: int, budget: int, *, streams: bool = False) -> int:
    """The prompt tokens to put beside ``decodes`` decoding tokens within ``budget``: cut so the step's
    tokens fill whole attention tiles, or ``budget`` itself when that would leave no prompt token. With
    ``streams`` (a KV stream per sequence), the tokens after the chunk's first fill them: a micro-batch of
    fewer than a tile's queries takes ggml's untiled attention, ~1.6x the cost per token (bench-200m,
    2 cores, docs/performance.md#per-sequence-kv-streams)."""
    if streams:
        whole = (budget - 1) // ATTENTION_TILE * ATTENTION_TILE
        return whole + 1 if whole else budget
    whole = (decodes + budget) // ATTENTION_TILE * ATTENTION_TILE
    return whole - decodes if whole > decodes else budget


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_seqs: int
    """Sequences decoded together at most (llama.cpp's ``n_seq_max``)."""
    token_budget: int
    """Tokens per step at most (llama.cpp's ``n_batch``)."""
    prefill_chunk: int | None = None
    """Prompt tokens per step at most while the step also decodes (None: the whole budget); one more with
    ``streams``, whose chunks' first token rides in the decodes' micro-batch."""
    streams: bool = False
    """A KV stream per sequence (stream_cache.py): llama.cpp splits a step into micro-batches by sequence."""


@dataclass(frozen=True, slots=True)
class ScheduledChunk:
    """Tokens ``start:start+length`` of ``seq`` are decoded this step."""

    seq: Sequence
    start: int
    length: int
    draft: tuple[int, ...] = ()
    """Speculative tokens decoded after the chunk (backends/llamacpp/speculator.py); their cells are
    reserved too, and ``update`` keeps only those the sequence accepted."""

    @property
    def samples(self) -> bool:
        """True when the chunk reaches the sequence's last token, whose logits give the next one."""
        return self.start + self.length == self.seq.num_tokens


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    chunks: tuple[ScheduledChunk, ...]
    preempted: tuple[Sequence, ...]
    memory_ops: tuple[MemoryOp, ...]
    """KV removals and shares the runner applies, in order, before decoding."""
    starved: tuple[Sequence, ...] = ()
    """Beams that got no cells: beams are never preempted (their search would lose step), so
    their search has to end here."""
    adapter: str | None = None
    """The LoRA adapter every chunk's sequence runs with (None: the base model)."""

    @property
    def num_tokens(self) -> int:
        return sum(c.length + len(c.draft) for c in self.chunks)


class Scheduler:
    """Owned by the engine thread; every method runs there."""

    def __init__(self, config: SchedulerConfig, kv: KVManager) -> None:
        self.config = config
        self.kv = kv
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._served: dict[str | None, int] = {}
        """Each adapter's (None: the base model's) last step."""
        self._steps = 0
        self._repack = False
        """Slots were taken or left since the last ``_pack``: a gap may have opened."""

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> SchedulerOutput:
        """The next step's chunks, all of one adapter's sequences (the first in turn that has any)."""
        chunks: list[ScheduledChunk] = []
        preempted: list[Sequence] = []
        starved: list[Sequence] = []
        adapter: str | None = None
        if self._repack and not self.waiting:  # else a newcomer takes the lowest idle slot, a gap first: no copy
            self._repack = False
            self._pack()
        for adapter in self._turns():
            self._schedule_adapter(adapter, chunks, preempted, starved)
            if chunks or preempted or starved:
                break
        self._steps += 1
        self._served[adapter] = self._steps
        return SchedulerOutput(tuple(chunks), tuple(preempted), self.kv.take_ops(), tuple(starved), adapter)

    def _pack(self) -> None:
        """Let the KV manager close gaps between running slots (stream_cache.py) and follow its moves."""
        moves = self.kv.pack()
        if moves:
            by_slot = {seq.slot: seq for seq in self.running}
            for src, dst in moves:
                seq = by_slot.pop(src)
                seq.slot, by_slot[dst] = dst, seq

    def _turns(self) -> list[str | None]:
        """The adapters with work (a running sequence with tokens to compute, or a waiting one), the
        least recently served first, then by their oldest sequence."""
        oldest: dict[str | None, int] = {}
        for seq in self.running:
            if seq.status is SequenceStatus.RUNNING and seq.num_uncomputed > 0:
                oldest[seq.adapter] = min(oldest.get(seq.adapter, seq.arrival), seq.arrival)
        for seq in self.waiting:
            oldest[seq.adapter] = min(oldest.get(seq.adapter, seq.arrival), seq.arrival)
        return sorted(oldest, key=lambda a: (self._served.get(a, 0), oldest[a]))

    def _schedule_adapter(
        self, adapter: str | None, chunks: list[ScheduledChunk], preempted: list[Sequence], starved: list[Sequence]
    ) -> None:
        budget = self.config.token_budget
        mine = [s for s in self.running if s.adapter == adapter and s.status is SequenceStatus.RUNNING]
        for seq in sorted((s for s in mine if s.num_uncomputed == 1), key=lambda s: s.arrival):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            if self._allocate_or_preempt(seq, 1, chunks, preempted):
                chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, 1))
                budget -= 1
            elif seq.beam is not None:
                starved.append(seq)
        if chunks and self.config.prefill_chunk is not None:
            streams = self.config.streams
            chunk = min(budget, self.config.prefill_chunk + (1 if streams else 0))
            budget = aligned_prefill(len(chunks), chunk, streams=streams)
        if not preempted:
            self._admit(adapter)
        scheduled = {id(c.seq) for c in chunks}
        prompts = [  # prompts being prefilled, and sequences admitted this step
            s
            for s in self.running
            if s.adapter == adapter and s.status is SequenceStatus.RUNNING and s.num_uncomputed > 0
            and id(s) not in scheduled
        ]  # fmt: skip
        self._prefill(prompts, budget, chunks, preempted)

    def _prefill(
        self, prompts: list[Sequence], budget: int, chunks: list[ScheduledChunk], preempted: list[Sequence]
    ) -> None:
        """Share ``budget`` among the sequences with prompt tokens to compute: the oldest gets a
        quarter of it first, then the shortest remaining prompts get the rest."""
        if not prompts or budget == 0:
            return
        grants: dict[int, int] = {}
        oldest = min(prompts, key=lambda s: s.arrival)
        grants[id(oldest)] = min(oldest.num_uncomputed, max(budget // 4, 1))
        budget -= grants[id(oldest)]
        for seq in sorted(prompts, key=lambda s: (s.num_uncomputed, s.arrival)):
            more = min(seq.num_uncomputed - grants.get(id(seq), 0), budget)
            grants[id(seq)] = grants.get(id(seq), 0) + more
            budget -= more
        for seq in sorted(prompts, key=lambda s: s.arrival):
            length = grants[id(seq)]
            if length == 0 or seq.status is not SequenceStatus.RUNNING:
                continue  # no budget left for it, or preempted for an older one's cells
            if self._allocate_or_preempt(seq, length, chunks, preempted):
                chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, length))

    def update(self, output: SchedulerOutput) -> None:
        """The runner decoded ``output``: those tokens' KV is now in the cache.

        A chunk's draft tokens count as computed as far as the sequence took them (the engine appends
        the accepted ones before calling this); the cells of the rest are given back.
        """
        for chunk in output.chunks:
            seq = chunk.seq
            decoded = chunk.start + chunk.length + len(chunk.draft)
            seq.num_computed_tokens = min(decoded, seq.num_tokens)
            assert seq.slot is not None
            if decoded > seq.num_computed_tokens:
                self.kv.shrink(seq.slot, decoded - seq.num_computed_tokens)
            self.kv.commit(seq.slot, seq.block_hashes(), seq.token_ids)

    def fork(self, parent: Sequence, token_id: int) -> Sequence | None:
        """A running copy of ``parent`` continuing with ``token_id``, sharing its KV; None if no room."""
        assert parent.slot is not None
        slot = self.kv.fork(parent.slot)
        if slot is None:
            return None
        child = parent.fork(token_id, slot)
        self.running.append(child)
        self._repack = True
        return child

    def finish(self, seq: Sequence) -> None:
        """Retire a sequence that is done (its finish reason is set by the caller); its full
        blocks stay in the prefix cache."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self._cache_slot(seq)
            self._repack = True
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED

    def _allocate_or_preempt(
        self, seq: Sequence, length: int, chunks: list[ScheduledChunk], preempted: list[Sequence]
    ) -> bool:
        """Reserve cells for ``seq``, preempting newer unscheduled sequences; False if ``seq`` itself went."""
        assert seq.slot is not None
        scheduled = {id(c.seq) for c in chunks}
        while not self.kv.allocate(seq.slot, length):
            victims = [s for s in self.running if id(s) not in scheduled and s.beam is None]
            if not victims:
                return False
            victim = max(victims, key=lambda s: s.arrival)
            self._preempt(victim)
            preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._cache_slot(seq)
        self._repack = True
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _admit(self, adapter: str | None) -> None:
        """Admit ``adapter``'s waiting sequences, in arrival order, while a slot is free and their
        prompt fits; ``_prefill`` gives them tokens. A beam search's prompt needs a slot for every beam
        of its width, held for it until it ends, so that its forks find one (else they would be dropped
        and the search would be narrower under load than alone); what arrived after a waiting search,
        whatever its adapter, waits behind it, so that slots free up for it."""
        queue = [s for s in self.waiting if s.adapter == adapter]
        if not queue:
            return
        free = self.config.max_seqs - len(self.running) - self._held_for_beams()
        search = min((s.arrival for s in self.waiting if s.beam is not None), default=None)
        for seq in queue:
            need = seq.beam.width if seq.beam is not None else 1
            if need > free or (search is not None and seq.arrival > search):
                break
            admission = self.kv.admit(seq.block_hashes(), seq.num_tokens, seq.token_ids, seq.hash_seed)
            if admission is None:
                break  # FIFO: a big prompt at the head waits for room rather than being overtaken
            self.waiting.remove(seq)
            seq.slot, seq.status = admission.slot, SequenceStatus.RUNNING
            seq.num_computed_tokens = admission.cached_tokens
            if seq.num_preemptions == 0:
                seq.num_cached_tokens = admission.cached_tokens
            self.running.append(seq)
            self._repack = True  # a prefix taken over in a high slot can leave a gap below it
            free -= need
            if seq.beam is not None:  # the search waited for is in: the next one, if any, is waited for
                search = min((s.arrival for s in self.waiting if s.beam is not None), default=None)

    def _held_for_beams(self) -> int:
        """Slots the running beam searches may still fork into: their widths less their running beams."""
        beams = [seq.beam for seq in self.running if seq.beam is not None]
        return sum(search.width for search in {id(b): b for b in beams}.values()) - len(beams)

    def _cache_slot(self, seq: Sequence) -> None:
        assert seq.slot is not None
        self.kv.cache(seq.slot)
        seq.slot = None

    def check_integrity(self, held: dict[int, int]) -> None:
        """KV accounts agree with the running sequences and with ``held`` (slot → positions
        llama.cpp holds). Called between steps."""
        self.kv.check_integrity(held)
        for seq in self.running:
            assert seq.slot is not None
            cells = self.kv.cells_of(seq.slot)
            if cells != seq.num_computed_tokens:
                raise KVIntegrityError(f"{seq.key} computed {seq.num_computed_tokens} tokens but holds {cells} cells")
