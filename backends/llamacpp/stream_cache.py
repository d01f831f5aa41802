"""Book-keeping of a KV cache split into one stream per sequence id (llama.cpp's ``kv_unified = false``).

Each slot (sequence id) owns a stream of ``stream_cells`` cells that no other slot sees, so a token's
attention runs over its own sequence's cells only, where in the unified cache (kv_cache.py) it runs
over the occupied span of every sequence's (docs/performance.md, "Per-sequence KV streams"). It is
llama-server's layout for its ``-np`` slots. The price: a sequence holds at most ``stream_cells``
positions, and slots cannot share cells, only copy them.

A prompt reuses a prefix these ways, the one holding the most of it first (on a tie, in this order):

- a *cached* slot (a finished sequence whose full blocks stay in its stream) holding the prefix is
  taken over and cut to it: nothing moves, as llama-server reuses its most similar idle slot;
- a running slot holding it is copied into the new slot (``CopyOp``: llama.cpp writes the cells out and
  reads them in, microseconds per cell where recomputing a token costs milliseconds);
- a host copy (host_tier.py) holding it is read back into the new slot (``RestoreOp``);
- with no whole block cached anywhere, the slot the new sequence goes to keeps the leading tokens of its
  own first block that the prompt shares (a request's common opening; only within one tenant), as
  llama-server reuses a slot's common prefix; what it held goes to the host tier first, as when it is
  claimed. Another slot's head is not copied: a copy moves the whole stream, which a few tokens do not repay.

A sequence needing a slot of its own takes the lowest-numbered one not running (without a host tier, or
when the slot's prefix would not fit in it, the lowest that holds nothing, if any); what that slot held
goes to the host tier first. Low ids keep the running sequences packed: llama.cpp splits a multi-stream
batch into one micro-batch per run of consecutive sequence ids, each an evaluation of the whole model
(running ids 0, 1, 3 cost two, 0, 1, 2 one). So a cached slot is taken over only where a new sequence
would go anyway (or lower, or while nothing runs); one further up is copied from instead, which costs
microseconds a cell once where a gap costs an evaluation every step.

Sequences finish in any order, so a low slot falls idle under running ones: between steps, with
nothing waiting for a slot (a newcomer would fill the gap for free), ``pack`` moves the highest running
sequence down into it (``CopyOp``: ~0.5 ms for 100 cells on bench-200m, where each step with the gap
costs ~5.7 ms more at 8 decodes), unless its prefix there would be lost or the sequence is longer than
``MOVE_CELLS_MAX``.

A slot's cells are its own, so growing never waits for another sequence and nothing is ever preempted;
only growing beyond the stream fails, which the engine rules out (``max_model_len`` ≤ ``stream_cells``):
it is a ``KVIntegrityError``. Cached slots cost other sequences nothing while they wait, so they stay
until their slot is wanted. Accounting is in blocks of ``BLOCK_SIZE`` positions with chain hashes, as in
kv_cache.py; like it, this class does no I/O and records ``MemoryOp``s for the runner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lmgate.backends.llamacpp.host_tier import HostTier, StoredBlock
from lmgate.backends.llamacpp.kv_cache import (
    BLOCK_SIZE,
    Admission,
    CopyOp,
    ForgetOp,
    KVIntegrityError,
    MemoryOp,
    RemoveOp,
    RestoreOp,
    SpillOp,
    matching_head,
    shared_head,
)

MOVE_CELLS_MAX = 1024
"""The longest sequence ``pack`` moves: copying 1,000 cells costs ~5 ms on bench-200m (2 cores), about what
one extra micro-batch of 8 decodes costs a step (docs/performance.md, "Sixth session": closing the gaps)."""


@dataclass(eq=False, slots=True)
class _Stream:
    blocks: list[StoredBlock] = field(default_factory=list)
    tail: int = 0  # cells reserved or computed beyond the full blocks
    running: bool = False

    @property
    def cells(self) -> int:
        return BLOCK_SIZE * len(self.blocks) + self.tail


class StreamCacheManager:
    """Owned by the engine thread. ``prefix_caching=False`` keeps the accounting and reuses nothing."""

    def __init__(
        self, stream_cells: int, num_slots: int, *, prefix_caching: bool = True, host_cells_max: int = 0
    ) -> None:
        """``stream_cells``: cells of each slot's stream; ``host_cells_max``: positions host copies of
        cached slots may hold (0: no host tier)."""
        if stream_cells <= 0 or num_slots <= 0:
            raise ValueError(f"need cells and slots, got stream_cells={stream_cells} num_slots={num_slots}")
        self.stream_cells = stream_cells
        self.num_slots = num_slots
        self.total_cells = stream_cells * num_slots
        self.prefix_caching = prefix_caching
        self.host = HostTier(host_cells_max) if prefix_caching and host_cells_max > 0 else None
        self._streams = [_Stream() for _ in range(num_slots)]
        self._ops: list[MemoryOp] = []
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.evictions = 0

    # --- reading ---

    @property
    def used_cells(self) -> int:
        return sum(stream.cells for stream in self._streams)

    @property
    def reclaimable_cells(self) -> int:
        """Cells cached slots hold."""
        return sum(stream.cells for stream in self._streams if not stream.running)

    def cells_of(self, slot: int) -> int:
        return self._streams[slot].cells

    def room(self, slot: int) -> int:
        """Cells ``slot`` can still grow by: what its stream has left."""
        return self.stream_cells - self._streams[slot].cells

    # --- admission and growth ---

    def admit(
        self, hashes: list[bytes], num_tokens: int, tokens: Sequence[int] = (), seed: bytes | None = None
    ) -> Admission | None:
        """A slot for a sequence of ``num_tokens`` whose full blocks hash to ``hashes``, holding the longest
        prefix a cached slot, a host copy or a running slot has (see the module's docstring), leaving at
        least one token to compute; given ``tokens``, a cached or running source also gives the leading
        tokens of its next block that match, and given ``seed`` too (what the sequence's block 0 hashes
        from), the slot it goes to keeps the leading tokens of its first block when no whole block is
        cached anywhere. None when every slot is running or the sequence is longer than a stream; nothing
        changes then."""
        idle = [slot for slot, stream in enumerate(self._streams) if not stream.running]
        if not idle or num_tokens > self.stream_cells:
            return None
        if self.prefix_caching:
            self.prefix_queries += num_tokens
        wanted = hashes[: (num_tokens - 1) // BLOCK_SIZE] if self.prefix_caching else []
        depth, source = self._holder(wanted)
        key, host_depth = self.host.match(wanted) if self.host is not None else (None, 0)
        target = self._target(idle)
        packed = source is not None and (source <= target or len(idle) == self.num_slots)
        if source is not None and not self._streams[source].running and depth >= host_depth and packed:
            slot, partial = source, self._partial(source, depth, tokens, num_tokens - 1)
            self._cut(slot, depth, partial)
        elif self.host is not None and key is not None and host_depth > depth:
            copy = self.host.take(key)  # before a spill in _claim can push it out
            slot, depth, partial = self._claim(target), host_depth, 0
            self._ops.append(RestoreOp(key, slot))
            if copy.cells > BLOCK_SIZE * depth:
                self._ops.append(RemoveOp(slot, BLOCK_SIZE * depth))
            self._streams[slot].blocks = list(copy.blocks[:depth])
        elif source is not None:  # running, or cached above where the new sequence goes: never ``target``
            slot, partial = self._claim(target), self._partial(source, depth, tokens, num_tokens - 1)
            self._ops.append(CopyOp(source, slot, BLOCK_SIZE * depth + partial))
            self._streams[slot].blocks = self._streams[source].blocks[:depth]
            self._streams[slot].tail = partial
        else:  # no whole block anywhere: the leading tokens the target's own first block shares, if any
            depth, partial = 0, self._head(target, seed, tokens[: min(num_tokens - 1, BLOCK_SIZE)])
            slot = self._claim(target, keep=partial)
        self._streams[slot].running = True
        self.prefix_hits += BLOCK_SIZE * depth + partial
        return Admission(slot, BLOCK_SIZE * depth + partial)

    def fork(self, src: int) -> int | None:
        """A new slot holding a copy of every position ``src`` (a running slot) holds (beam search); None if
        every slot runs."""
        if not self._streams[src].running:
            raise KVIntegrityError(f"fork of slot {src}, which is not running")
        idle = [slot for slot, stream in enumerate(self._streams) if not stream.running]
        if not idle:
            return None
        slot = self._claim(self._target(idle))
        source, stream = self._streams[src], self._streams[slot]
        self._ops.append(CopyOp(src, slot, source.cells))
        stream.blocks, stream.tail, stream.running = list(source.blocks), source.tail, True
        return slot

    def pack(self) -> list[tuple[int, int]]:
        """Move running sequences into the idle slots between running ones, the highest first, so the
        running slots are consecutive ids; ``(from, to)`` per move, in order. An idle slot whose prefix
        would be lost (``_loses``) is not moved into, nor is a sequence longer than ``MOVE_CELLS_MAX``
        moved. Between steps only (every reserved cell decoded into)."""
        moves: list[tuple[int, int]] = []
        while True:
            running = [slot for slot, stream in enumerate(self._streams) if stream.running]
            if len(running) < 2:
                return moves
            low, high = running[0], running[-1]
            gaps = (s for s in range(low + 1, high) if not self._streams[s].running and not self._loses(s))
            gap = next(gaps, None)
            source = self._streams[high]
            if gap is None or source.cells > MOVE_CELLS_MAX:
                return moves
            stream = self._streams[self._claim(gap)]
            self._ops.append(CopyOp(high, gap, source.cells))
            self._ops.append(RemoveOp(high, 0))
            stream.blocks, stream.tail, stream.running = source.blocks, source.tail, True
            source.blocks, source.tail, source.running = [], 0, False
            moves.append((high, gap))

    def allocate(self, slot: int, num_cells: int) -> bool:
        """Reserve ``num_cells`` more cells of ``slot``'s stream. Always True: a stream is the sequence's own,
        and the engine keeps sequences within it; beyond it is a ``KVIntegrityError``."""
        if num_cells > self.room(slot):
            raise KVIntegrityError(f"slot {slot} asks {num_cells} cells with {self.room(slot)} left in its stream")
        self._streams[slot].tail += num_cells
        return True

    def shrink(self, slot: int, num_cells: int) -> None:
        """Give back the last ``num_cells`` reserved cells of ``slot`` (rejected draft tokens)."""
        stream = self._streams[slot]
        if not 0 <= num_cells <= stream.tail:
            raise KVIntegrityError(f"slot {slot} cannot give back {num_cells} of its {stream.tail} tail cells")
        stream.tail -= num_cells
        self._ops.append(RemoveOp(slot, stream.cells))

    def commit(self, slot: int, hashes: list[bytes], tokens: Sequence[int] = ()) -> None:
        """The reserved cells were decoded into: every completed block of the tail becomes a block."""
        stream = self._streams[slot]
        while stream.tail >= BLOCK_SIZE:
            i = len(stream.blocks)
            stream.blocks.append((hashes[i], tuple(tokens[BLOCK_SIZE * i : BLOCK_SIZE * (i + 1)])))
            stream.tail -= BLOCK_SIZE

    # --- giving back ---

    def release(self, slot: int) -> None:
        """Give back the slot and all it holds."""
        stream = self._streams[slot]
        stream.blocks, stream.tail, stream.running = [], 0, False
        self._ops.append(RemoveOp(slot, 0))

    def cache(self, slot: int) -> None:
        """Keep the slot's full blocks for later prefixes; drop its tail."""
        stream = self._streams[slot]
        if not self.prefix_caching or not stream.blocks:
            self.release(slot)
            return
        stream.tail, stream.running = 0, False
        self._ops.append(RemoveOp(slot, stream.cells))

    def advance(self, num_tokens: int) -> None:
        """Nothing expires: a cached stream is outside every other sequence's attention."""

    def take_ops(self) -> tuple[MemoryOp, ...]:
        """Memory operations recorded since the last call, in the order llama.cpp must apply them."""
        ops, self._ops = tuple(self._ops), []
        return ops

    # --- internals ---

    def _holder(self, wanted: list[bytes]) -> tuple[int, int | None]:
        """How many blocks of ``wanted`` the best slot holds, and that slot (None if none holds the first):
        the most blocks, then a cached slot (taken over without a copy), the fewest blocks past the prefix,
        the lowest id (where new sequences go)."""
        best: tuple[int, bool, int, int] | None = None
        source = None
        for slot, stream in enumerate(self._streams):
            depth = 0
            for (block_hash, _), want in zip(stream.blocks, wanted, strict=False):
                if block_hash != want:
                    break
                depth += 1
            rank = (depth, not stream.running, depth - len(stream.blocks), -slot)
            if depth and (best is None or rank > best):
                best, source = rank, slot
        return (best[0], source) if best is not None else (0, None)

    def _partial(self, source: int, num_blocks: int, tokens: Sequence[int], limit: int) -> int:
        """How many leading tokens of ``source``'s block after its first ``num_blocks`` equal ``tokens``
        from there on (up to position ``limit``)."""
        blocks = self._streams[source].blocks
        if len(blocks) <= num_blocks:
            return 0
        return matching_head(blocks[num_blocks][1], tokens[BLOCK_SIZE * num_blocks : limit])

    def _head(self, slot: int, seed: bytes | None, tokens: Sequence[int]) -> int:
        """How many leading ``tokens`` idle ``slot``'s first block holds, if it is the tenant's of ``seed``."""
        blocks = self._streams[slot].blocks
        if not self.prefix_caching or seed is None or not blocks:
            return 0
        return shared_head(seed, blocks[0], tokens)

    def _cut(self, slot: int, num_blocks: int, keep: int) -> None:
        """Keep the first ``num_blocks`` blocks of a cached ``slot`` and ``keep`` positions after them (its tail)."""
        stream = self._streams[slot]
        del stream.blocks[num_blocks:]
        stream.tail = keep
        self._ops.append(RemoveOp(slot, stream.cells))

    def _target(self, idle: list[int]) -> int:
        """The idle slot a new sequence goes to: the lowest, but the lowest holding nothing before one whose
        prefix would be lost (no host tier, or too big for it)."""
        return min(idle, key=lambda slot: (self._loses(slot), slot))

    def _loses(self, slot: int) -> bool:
        """Whether claiming idle ``slot`` drops a prefix (no host tier, or too big for it)."""
        cells = self._streams[slot].cells
        return cells > 0 and (self.host is None or cells > self.host.max_cells)

    def _claim(self, slot: int, keep: int = 0) -> int:
        """Empty idle ``slot`` for a new sequence but its first ``keep`` positions (a prefix shorter than a
        block, the new sequence's tail) and return it; what it held goes to the host tier first, if there is one
        and it fits."""
        stream = self._streams[slot]
        if stream.cells:
            self.evictions += 1
            if self.host is not None and stream.cells <= self.host.max_cells:
                key, dropped = self.host.add(stream.blocks, stream.cells)
                self._ops.append(SpillOp(slot, key))
                self._ops.extend(ForgetOp(old) for old in dropped)
            self._ops.append(RemoveOp(slot, keep))
        stream.blocks, stream.tail = [], keep
        return slot

    # --- invariants ---

    def check_integrity(self, computed: Mapping[int, int]) -> None:
        """Check the accounts; ``computed`` is slot → positions llama.cpp holds, for every slot.

        Called between steps, when every reserved cell has been decoded into.
        """
        for slot, stream in enumerate(self._streams):
            if not stream.running and stream.tail:
                raise KVIntegrityError(f"cached slot {slot} keeps a tail of {stream.tail}")
            if stream.cells > self.stream_cells:
                raise KVIntegrityError(f"slot {slot} holds {stream.cells} cells, its stream {self.stream_cells}")
            if stream.cells != computed.get(slot, 0):
                raise KVIntegrityError(f"slot {slot} holds {stream.cells} cells, llama.cpp {computed.get(slot, 0)}")
