"""Which tokens of which sequences go into the next ``llama_decode``: pure policy, no llama.cpp.

Each step has a token budget (the context's ``n_batch``). Running sequences come first, those
decoding one token before those still prefilling, oldest first; then waiting sequences are
admitted in arrival order while a slot is free and their whole uncomputed prompt fits in the free
cells (or cells cached slots can give back). An admitted sequence starts from the longest prefix
the KV cache already holds. A prompt longer than the budget is prefilled in chunks over several
steps. When a running sequence cannot get cells, the newest running sequence is preempted: its
slot becomes a cached slot (evicted first when cells are short) and it goes back to the front of
the queue, to be recomputed (its tokens are kept) from whatever of its prefix is still cached.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from lmgate.backends.llamacpp.kv_cache import KVCacheManager, KVIntegrityError, MemoryOp
from lmgate.backends.llamacpp.sequence import Sequence, SequenceStatus


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_seqs: int
    """Sequences decoded together at most (llama.cpp's ``n_seq_max``)."""
    token_budget: int
    """Tokens per step at most (llama.cpp's ``n_batch``)."""


@dataclass(frozen=True, slots=True)
class ScheduledChunk:
    """Tokens ``start:start+length`` of ``seq`` are decoded this step."""

    seq: Sequence
    start: int
    length: int

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

    @property
    def num_tokens(self) -> int:
        return sum(c.length for c in self.chunks)


class Scheduler:
    """Owned by the engine thread; every method runs there."""

    def __init__(self, config: SchedulerConfig, kv: KVCacheManager) -> None:
        self.config = config
        self.kv = kv
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> SchedulerOutput:
        budget = self.config.token_budget
        chunks: list[ScheduledChunk] = []
        preempted: list[Sequence] = []
        starved: list[Sequence] = []
        for seq in sorted(self.running, key=lambda s: (s.num_uncomputed > 1, s.arrival)):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING or seq.num_uncomputed == 0:
                continue  # preempted earlier in this loop, or a beam waiting for its siblings
            length = min(seq.num_uncomputed, budget)
            if self._allocate_or_preempt(seq, length, chunks, preempted):
                chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, length))
                budget -= length
            elif seq.beam is not None:
                starved.append(seq)
        if not preempted:
            budget = self._admit(budget, chunks)
        return SchedulerOutput(tuple(chunks), tuple(preempted), self.kv.take_ops(), tuple(starved))

    def update(self, output: SchedulerOutput) -> None:
        """The runner decoded ``output``: those tokens' KV is now in the cache."""
        for chunk in output.chunks:
            seq = chunk.seq
            seq.num_computed_tokens += chunk.length
            assert seq.slot is not None
            self.kv.commit(seq.slot, seq.block_hashes(), seq.token_ids)

    def fork(self, parent: Sequence, token_id: int) -> Sequence | None:
        """A running copy of ``parent`` continuing with ``token_id``, sharing its KV; None if no room."""
        assert parent.slot is not None
        slot = self.kv.fork(parent.slot)
        if slot is None:
            return None
        child = parent.fork(token_id, slot)
        self.running.append(child)
        return child

    def finish(self, seq: Sequence) -> None:
        """Retire a sequence that is done (its finish reason is set by the caller); its full
        blocks stay in the prefix cache."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self._cache_slot(seq)
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
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _admit(self, budget: int, chunks: list[ScheduledChunk]) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_seqs:
            seq = self.waiting[0]
            admission = self.kv.admit(seq.block_hashes(), seq.num_tokens, seq.token_ids)
            if admission is None:
                break  # FIFO: a big prompt at the head waits for room rather than being overtaken
            self.waiting.popleft()
            seq.slot, seq.status = admission.slot, SequenceStatus.RUNNING
            seq.num_computed_tokens = admission.cached_tokens
            if seq.num_preemptions == 0:
                seq.num_cached_tokens = admission.cached_tokens
            self.running.append(seq)
            length = min(seq.num_uncomputed, budget)
            if not self.kv.allocate(admission.slot, length):
                raise AssertionError("admit() promised room for the whole prompt")
            chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, length))
            budget -= length
        return budget

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
