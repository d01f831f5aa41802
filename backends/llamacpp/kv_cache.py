"""Book-keeping of llama.cpp's unified KV cache: cells, slots, and a prefix cache of token blocks.

The context is created with ``kv_unified``: ``total_cells`` cells shared by all sequence ids
("slots"), so one long sequence may use what many short ones leave free, and a cell may belong to
several slots at once: ``llama_memory_seq_cp`` adds a slot to cells without copying data. That is
how a prefix hit is shared instead of recomputed.

Accounting is in **blocks** of ``BLOCK_SIZE`` positions. A slot's computed tokens are a chain of
full blocks plus a tail. Each full block is a physical set of cells, referenced by every slot
that holds it; its identity for the prefix cache is a hash chained through its parent's hash, so
equal hashes mean equal prefixes. Cells used = ``BLOCK_SIZE`` × live blocks + every slot's tail.

A finished (or preempted) sequence's slot is kept as a *cached* slot holding its full blocks. A
prompt whose prefix a cached slot holds takes that slot over (the one with the least past the prefix,
even when a running slot holds the prefix too), as llama-server reuses its most similar idle slot. Cached
slots are evicted least-recently-used when a slot or cells are needed, beyond ``cached_cells_max``
cells that only cached slots hold, and once the engine has computed ``cached_idle_tokens`` tokens
since a slot was cached (the newest cached slot stays through both). The bound and the expiry are for
speed, not room: llama.cpp's attention runs every token of a step over the unified cache's whole
occupied span, masked, and its allocator keeps that span near the cells in use, so a cold prefix
nobody hits costs every token computed while it waits (docs/performance.md, "Cold prefixes"). A hit may also take
the first tokens of the block after the matched chain, where they equal the prompt's (blocks keep
their token ids for this): a prompt repeated exactly recomputes one token, as in llama-server. A prompt
sharing less than a block with every chain still gets the leading tokens of a first block of its own
tenant (``_head_holder``): shared into its new slot, or kept in the cached slot it would evict. Running out of cells
is a value: ``allocate`` returns False after evicting what it can, and the scheduler preempts.

With a host tier (host_tier.py), an evicted or expired cached slot that holds cells of its own is first
copied out to host RAM; a prompt whose prefix a host copy holds further than the KV cache does gets
that copy put back into a slot of its own instead of recomputing it. Cold prefixes then leave the
attention span within a few steps and stay reusable.

This class does no I/O: it records ``MemoryOp``s in order, and the runner applies them to
llama.cpp before the next decode.
"""

from __future__ import annotations

import hashlib
import itertools
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lmgate.backends.llamacpp.host_tier import HostTier

BLOCK_SIZE = 16

HOST_TIER_IDLE_TOKENS = 64
"""Default ``cached_idle_tokens`` with a host tier: copying a cached slot out and back costs a few µs
per cell, keeping it in the span ~0.2–0.6 µs per cell for every token computed (bench-200m, 2 cores),
so a cold slot is worth moving out after a few steps (docs/performance.md, "Cold prefixes")."""


def default_idle_tokens(n_params: int, attention_rows: int, *, host_tier: bool = False) -> int:
    """Computed tokens a cold cached prefix is kept for by default. With a host tier, where it waits
    outside the span, ``HOST_TIER_IDLE_TOKENS``. Without, for a model of ``n_params`` weights whose
    attention scans each KV cell ``attention_rows`` (query heads × layers) times per token: about the
    break-even of keeping a cell (~3 ns per scan, ~0.6 µs per token for bench-200m's 192 on 2 cores)
    against recomputing it on a hit (a prompt token's share of the weights' FLOPs, ~1.4 ms there),
    n_params / (256 × attention_rows), 2× on the side of keeping (docs/performance.md, "Cold prefixes")."""
    if host_tier:
        return HOST_TIER_IDLE_TOKENS
    return max(BLOCK_SIZE, n_params // (256 * max(attention_rows, 1)))


def block_hash(parent: bytes, tokens: Sequence[int]) -> bytes:
    """A block's chain hash: its tokens after ``parent`` (the block before's hash; block 0's, the seed of the
    sequence's tenant: sequence.py). BLAKE2b, not Python's ``hash``: a collision would serve one user another's KV."""
    digest = hashlib.blake2b(parent, digest_size=16)
    digest.update(array("i", tokens).tobytes())
    return digest.digest()


def extend_chain(hashes: list[bytes], seed: bytes, tokens: Sequence[int]) -> list[bytes]:
    """``hashes`` (the chain hashes of the first blocks of ``tokens``) extended to every full block of
    ``tokens``, in place: block i's hash covers its tokens and block i-1's hash, block 0's ``seed`` (its
    tenant: sequence.py), so equal hashes mean equal prefixes of the same tenant."""
    for i in range(len(hashes), len(tokens) // BLOCK_SIZE):
        hashes.append(block_hash(hashes[-1] if hashes else seed, tokens[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]))
    return hashes


def shared_head(seed: bytes, first: tuple[bytes, Sequence[int]], tokens: Sequence[int]) -> int:
    """How many leading ``tokens`` a cached *first* block (its hash and tokens) holds, for a sequence whose
    block 0 hashes from ``seed``: 0 unless the block is that tenant's (same cache salt and LoRA adapter),
    so a prompt sharing less than a block reuses only its own tenant's cells, as whole blocks do."""
    block_hash_, block_tokens = first
    shared = matching_head(block_tokens, tokens)
    return shared if shared and block_hash(seed, block_tokens) == block_hash_ else 0


def matching_head(block_tokens: Sequence[int], tokens: Sequence[int]) -> int:
    """How many leading ``tokens`` equal a cached block's ``block_tokens``: the part of the block a prompt
    may take beyond whole blocks (an exact repeat then recomputes one token, as in llama-server)."""
    shared = 0
    for cached, wanted in zip(block_tokens, tokens, strict=False):
        if cached != wanted:
            break
        shared += 1
    return shared


class KVIntegrityError(AssertionError):
    """The book-keeping disagrees with itself or with llama.cpp: a bug, never user input."""


@dataclass(frozen=True, slots=True)
class RemoveOp:
    """Drop ``slot`` from every cell at positions ≥ ``from_pos``."""

    slot: int
    from_pos: int


@dataclass(frozen=True, slots=True)
class ShareOp:
    """Add ``dst`` to the cells of ``src`` at positions < ``num_tokens`` (no data is copied)."""

    src: int
    dst: int
    num_tokens: int


@dataclass(frozen=True, slots=True)
class SpillOp:
    """Copy every position ``slot`` holds to host memory under ``key`` (a RemoveOp of the slot follows)."""

    slot: int
    key: int


@dataclass(frozen=True, slots=True)
class RestoreOp:
    """Put host copy ``key`` into ``slot``, which holds nothing, and free the copy."""

    key: int
    slot: int


@dataclass(frozen=True, slots=True)
class ForgetOp:
    """Free host copy ``key``."""

    key: int


@dataclass(frozen=True, slots=True)
class CopyOp:
    """Copy the cells of ``src`` into ``dst`` (a slot of another KV stream that holds nothing), then drop
    ``dst``'s positions ≥ ``num_tokens`` (stream_cache.py: streams cannot share cells)."""

    src: int
    dst: int
    num_tokens: int


MemoryOp = RemoveOp | ShareOp | SpillOp | RestoreOp | ForgetOp | CopyOp


@dataclass(eq=False, slots=True)
class Block:
    """``BLOCK_SIZE`` cells holding one block of a prefix; alive while any slot holds it."""

    hash: bytes
    holders: set[int] = field(default_factory=set)
    tokens: tuple[int, ...] = ()
    """Its token ids (empty when the caller gave none): for partial hits."""


@dataclass(eq=False, slots=True)
class _Slot:
    blocks: list[Block] = field(default_factory=list)
    tail: int = 0  # cells reserved or computed beyond the full blocks
    cached: bool = False
    last_used: int = 0
    cached_at: int = 0  # the manager's count of computed tokens when the slot was cached


@dataclass(frozen=True, slots=True)
class Admission:
    slot: int
    cached_tokens: int


class KVCacheManager:
    """Owned by the engine thread. ``prefix_caching=False`` keeps the accounting and shares nothing."""

    def __init__(
        self,
        total_cells: int,
        num_slots: int,
        *,
        prefix_caching: bool = True,
        cached_cells_max: int | None = None,
        cached_idle_tokens: int | None = None,
        host_cells_max: int = 0,
    ) -> None:
        """``cached_cells_max``: cells only cached slots may hold (None: all that are free);
        ``cached_idle_tokens``: computed tokens (``advance``) a cached slot is kept for (None: no limit);
        ``host_cells_max``: positions host copies of evicted cached slots may hold (0: no host tier)."""
        if total_cells <= 0 or num_slots <= 0:
            raise ValueError(f"need cells and slots, got total_cells={total_cells} num_slots={num_slots}")
        self.total_cells = total_cells
        self.num_slots = num_slots
        self.prefix_caching = prefix_caching
        self.cached_cells_max = total_cells if cached_cells_max is None else cached_cells_max
        self.cached_idle_tokens = cached_idle_tokens
        self.host = HostTier(host_cells_max) if prefix_caching and host_cells_max > 0 else None
        self._computed = 0
        self._expiry_due = float("inf")  # no cached slot can expire before this many computed tokens
        self._free = list(range(num_slots - 1, -1, -1))  # pop() hands out slot 0 first
        self._slots: dict[int, _Slot] = {}
        self._index: dict[bytes, Block] = {}
        self._live_blocks = 0
        self._tails = 0
        self._ops: list[MemoryOp] = []
        self._changes = 0
        self._reclaimable_at = -1
        self._reclaimable_value = 0
        self._clock = itertools.count(1)
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.evictions = 0

    # --- reading ---

    @property
    def used_cells(self) -> int:
        return BLOCK_SIZE * self._live_blocks + self._tails

    @property
    def free_cells(self) -> int:
        return self.total_cells - self.used_cells

    @property
    def free_slots(self) -> int:
        """Slots neither running nor cached."""
        return len(self._free)

    @property
    def reclaimable_cells(self) -> int:
        """Cells only cached slots hold: free for the taking, kept while nobody needs them.

        Recomputed only after a slot changed hands (every such change records a memory op), so
        reading it after each decode step costs nothing in steady decoding.
        """
        if self._reclaimable_at != self._changes:
            self._reclaimable_value = self._reclaimable(keep=[])
            self._reclaimable_at = self._changes
        return self._reclaimable_value

    def cells_of(self, slot: int) -> int:
        """Positions ``slot`` holds (shared blocks included)."""
        state = self._slots[slot]
        return BLOCK_SIZE * len(state.blocks) + state.tail

    def room(self, slot: int) -> int:
        """Cells ``slot`` could grow by without evicting anything: the free ones (any slot may use them)."""
        return self.free_cells

    # --- admission and growth ---

    def admit(
        self, hashes: list[bytes], num_tokens: int, tokens: Sequence[int] = (), seed: bytes | None = None
    ) -> Admission | None:
        """A slot for a sequence of ``num_tokens`` whose full blocks hash to ``hashes``.

        The longest cached prefix (leaving at least one token to compute, whose logits are needed)
        is shared into the slot: whole blocks, then, given the sequence's ``tokens``, the leading
        tokens of the source's next block that match. With no whole block reused and given
        ``seed`` (what the sequence's block 0 hashes from), the leading tokens of another slot's first
        block of the same tenant: shared, or kept when that slot is the cached one about to be evicted.
        When keeping a prefix of whole blocks would leave too little room (cached slots holding it
        cannot be evicted), the sequence is admitted without it, so that an idle cache always admits
        what fits in it. A host copy that holds more of the prefix than the KV cache is put back
        instead, when it fits. None when the uncomputed rest cannot fit in the cells that are free or
        reclaimable from cached slots, or no slot can be had; nothing changes then (but cached slots
        may have moved to the host tier).
        """
        max_blocks = (num_tokens - 1) // BLOCK_SIZE
        chain = self._match(hashes, max_blocks)
        if self.prefix_caching:
            self.prefix_queries += num_tokens
        if self.host is not None:
            restored = self._restore(hashes[:max_blocks], len(chain), num_tokens)
            if restored is not None:
                return restored
            chain = self._match(hashes, max_blocks)  # evictions on the way may have dropped some of it
        # A cached holder is taken over (its cells are already in place; what it held past the chain
        # goes), as llama-server reuses the idle slot most like the prompt: cached copies left beside
        # running holders would widen every later step's attention (see the module's docstring).
        source = self._holder(chain) if chain else None
        if chain and num_tokens - BLOCK_SIZE * len(chain) > self._room_keeping(chain, source):
            chain, source = [], None
        hit = BLOCK_SIZE * len(chain)
        if num_tokens - hit > self._room_keeping(chain, source):
            return None
        partial = self._partial(source, len(chain), tokens, num_tokens - 1) if source is not None else 0
        if not chain and seed is not None:  # no whole block: the leading tokens of another first block
            source, partial = self._head_holder(seed, tokens[: min(num_tokens - 1, BLOCK_SIZE)])
        slot: int | None
        if source is not None and self._slots[source].cached and (chain or source == self._next_victim()):
            slot = source
            if not chain:  # it was about to be evicted
                self.evictions += 1
                if self.host is not None:
                    self._spill(slot, self._slots[slot])
            self._truncate(slot, len(chain), keep=partial)
        else:
            slot = self._acquire(exclude=source)
            if slot is None:
                return None
            if source is not None:
                self._share(source, slot, chain, partial)
        state = self._slots[slot]
        # The partial block's cells become the slot's tail. Shared with a source that keeps its
        # block, they are counted twice: an over-count of under a block, never under (as in fork).
        state.tail += partial
        self._tails += partial
        state.cached, state.last_used = False, next(self._clock)
        self.prefix_hits += hit + partial
        return Admission(slot, hit + partial)

    def fork(self, src: int) -> int | None:
        """A new slot sharing every position ``src`` holds (beam search). None if no slot or cells.

        The shared full blocks are counted once; the shared tail is counted again for the new slot
        (cells it partly shares with ``src``): an over-count of under a block per fork, never under.
        """
        tail = self._slots[src].tail
        while tail > self.free_cells:
            if not self._evict_one():
                return None
        slot = self._acquire(exclude=None)
        if slot is None:
            return None
        state = self._slots[slot]
        state.blocks = list(self._slots[src].blocks)
        for block in state.blocks:
            block.holders.add(slot)
        state.tail = tail
        self._tails += tail
        state.last_used = next(self._clock)
        self._record(ShareOp(src, slot, self.cells_of(src)))
        return slot

    def pack(self) -> list[tuple[int, int]]:
        """Nothing to move: llama.cpp decodes a unified cache's batch in one micro-batch whatever its ids."""
        return []

    def allocate(self, slot: int, num_cells: int) -> bool:
        """Reserve ``num_cells`` more cells for ``slot``, evicting cached slots if needed.

        False (and nothing reserved) when they cannot be had: the caller preempts.
        """
        while num_cells > self.free_cells:
            if not self._evict_one():
                return False
        self._slots[slot].tail += num_cells
        self._tails += num_cells
        return True

    def shrink(self, slot: int, num_cells: int) -> None:
        """Give back the last ``num_cells`` reserved cells of ``slot`` (rejected draft tokens: they were
        decoded into, so llama.cpp drops those positions too). They must lie in the tail, not committed."""
        state = self._slots[slot]
        if not 0 <= num_cells <= state.tail:
            raise KVIntegrityError(f"slot {slot} cannot give back {num_cells} of its {state.tail} tail cells")
        state.tail -= num_cells
        self._tails -= num_cells
        # Not ``_record``: no cached slot changed, so the reclaimable count stays valid.
        self._ops.append(RemoveOp(slot, self.cells_of(slot)))

    def commit(self, slot: int, hashes: list[bytes], tokens: Sequence[int] = ()) -> None:
        """The reserved cells were decoded into; turn every completed block of the tail into a
        shareable block. ``hashes`` are the chain hashes of the slot's full blocks (at least);
        ``tokens``, the sequence's token ids, let later prompts match part of a block."""
        state = self._slots[slot]
        while state.tail >= BLOCK_SIZE:
            i = len(state.blocks)
            block = Block(hashes[i], {slot}, tuple(tokens[BLOCK_SIZE * i : BLOCK_SIZE * (i + 1)]))
            if self.prefix_caching:
                self._index.setdefault(block.hash, block)
            state.blocks.append(block)
            state.tail -= BLOCK_SIZE
            self._tails -= BLOCK_SIZE
            self._live_blocks += 1

    # --- giving back ---

    def release(self, slot: int) -> None:
        """Give back the slot and every cell only it held."""
        self._release(slot)
        self._trim_cached()  # cells it shared with cached slots are theirs alone now

    def _release(self, slot: int) -> None:
        state = self._slots.pop(slot)
        if state.cached and self.host is not None:
            self._spill(slot, state)
        self._tails -= state.tail
        for block in state.blocks:
            self._drop(block, slot)
        self._free.append(slot)
        self._record(RemoveOp(slot, 0))

    def cache(self, slot: int) -> None:
        """Keep the slot's full blocks for later prefix hits (LRU); drop its tail."""
        state = self._slots[slot]
        if not self.prefix_caching or not state.blocks:
            self.release(slot)
            return
        self._tails -= state.tail
        state.tail = 0
        state.cached, state.last_used, state.cached_at = True, next(self._clock), self._computed
        self._record(RemoveOp(slot, BLOCK_SIZE * len(state.blocks)))
        self._trim_cached()
        if self.cached_idle_tokens is not None:
            self._expiry_due = self._computed  # the slot that was newest until now may be due already

    def advance(self, num_tokens: int) -> None:
        """The engine computed ``num_tokens`` more tokens (a step's batch): cached slots cached
        ``cached_idle_tokens`` or more tokens ago go, but the newest. A comparison while none is due."""
        self._computed += num_tokens
        if self._computed < self._expiry_due or self.cached_idle_tokens is None:
            return
        ttl, newest = self.cached_idle_tokens, self._newest_cached()
        for slot in [s for s, state in self._slots.items() if state.cached and s != newest]:
            if self._computed - self._slots[slot].cached_at >= ttl:
                self._release(slot)
                self.evictions += 1
        self._expiry_due = min(
            (s.cached_at + ttl for slot, s in self._slots.items() if s.cached and slot != newest), default=float("inf")
        )

    def _newest_cached(self) -> int | None:
        """The most recently cached slot, which the bound and the expiry both spare."""
        cached = [(state.last_used, slot) for slot, state in self._slots.items() if state.cached]
        return max(cached)[1] if cached else None

    def _spill(self, slot: int, state: _Slot) -> None:
        """Copy a cached slot that is going to the host tier, unless every block it holds stays in the KV
        cache with other slots (nothing would leave the span) or it alone exceeds the tier."""
        assert self.host is not None
        cells = BLOCK_SIZE * len(state.blocks)
        if cells > self.host.max_cells or all(len(block.holders) > 1 for block in state.blocks):
            return
        key, dropped = self.host.add([(block.hash, block.tokens) for block in state.blocks], cells)
        self._ops.append(SpillOp(slot, key))  # before the RemoveOp that ``_release`` records next
        self._ops.extend(ForgetOp(old) for old in dropped)

    def _restore(self, hashes: list[bytes], in_cache: int, num_tokens: int) -> Admission | None:
        """Admit a sequence of ``num_tokens`` from the host copy holding the most of ``hashes``, if it
        holds more than the ``in_cache`` blocks the KV cache has and it fits while whole (it is read back
        whole, then cut to the prefix); None otherwise."""
        assert self.host is not None
        key, depth = self.host.match(hashes)
        if key is None or depth <= in_cache:
            return None
        cells = self.host.cells_of(key)
        if max(cells, num_tokens) > self.free_cells + self.reclaimable_cells:
            return None
        if not self._free and not any(state.cached for state in self._slots.values()):
            return None  # no slot to be had
        copy = self.host.take(key)  # first: evictions below may add copies and push old ones out
        slot = self._acquire(exclude=None)
        while slot is not None and cells > self.free_cells and self._evict_one(exclude=slot):
            pass
        if slot is None or cells > self.free_cells:  # the checks above rule both out
            raise KVIntegrityError(f"no slot or {cells} free cells for host copy {key} after the room check")
        self._record(RestoreOp(key, slot))
        state = self._slots[slot]
        for block_hash, tokens in copy.blocks[:depth]:
            block = Block(block_hash, {slot}, tokens)
            self._index.setdefault(block_hash, block)
            state.blocks.append(block)
        self._live_blocks += depth
        if cells > BLOCK_SIZE * depth:
            self._record(RemoveOp(slot, BLOCK_SIZE * depth))
        state.last_used = next(self._clock)
        self.prefix_hits += BLOCK_SIZE * depth
        return Admission(slot, BLOCK_SIZE * depth)

    def _trim_cached(self) -> None:
        """Evict cached slots, least recently used first, until only cached slots hold at most
        ``cached_cells_max`` cells; the most recently cached one stays."""
        if self.cached_cells_max >= self.total_cells:
            return
        newest = self._newest_cached()
        while self.reclaimable_cells > self.cached_cells_max and self._evict_one(exclude=newest):
            pass

    def _record(self, op: MemoryOp) -> None:
        self._ops.append(op)
        self._changes += 1

    def take_ops(self) -> tuple[MemoryOp, ...]:
        """Memory operations recorded since the last call, in the order llama.cpp must apply them."""
        ops, self._ops = tuple(self._ops), []
        return ops

    # --- internals ---

    def _match(self, hashes: list[bytes], max_blocks: int) -> list[Block]:
        chain: list[Block] = []
        if self.prefix_caching:
            for block_hash in hashes[:max_blocks]:
                block = self._index.get(block_hash)
                if block is None:
                    break
                chain.append(block)
        return chain

    def _partial(self, source: int, num_blocks: int, tokens: Sequence[int], limit: int) -> int:
        """How many leading tokens of ``source``'s block after its first ``num_blocks`` equal
        ``tokens`` from there on (up to position ``limit``)."""
        blocks = self._slots[source].blocks
        if not self.prefix_caching or len(blocks) <= num_blocks:
            return 0
        return matching_head(blocks[num_blocks].tokens, tokens[BLOCK_SIZE * num_blocks : limit])

    def _head_holder(self, seed: bytes, tokens: Sequence[int]) -> tuple[int | None, int]:
        """The slot whose first block, of the tenant of ``seed``, starts with the most leading ``tokens`` (at
        least one), and how many: a prompt sharing less than a block with every cached one (a request's
        common opening) still takes those positions, as llama-server reuses a slot's common prefix."""
        best: tuple[int, bool, int] | None = None
        source = None
        if self.prefix_caching:
            for slot, state in self._slots.items():
                first = state.blocks[0] if state.blocks else None
                if first is not None and (shared := shared_head(seed, (first.hash, first.tokens), tokens)):
                    rank = (shared, not state.cached, state.last_used)
                    if best is None or rank > best:
                        best, source = rank, slot
        return source, best[0] if best is not None else 0

    def _next_victim(self) -> int | None:
        """The cached slot ``_acquire`` would evict for a slot now (None: a slot is free, or none is cached)."""
        return None if self._free else self._least_recently_used()

    def _least_recently_used(self, exclude: int | None = None) -> int | None:
        """The cached slot (other than ``exclude``) used least recently: the next one to evict."""
        cached = [(state.last_used, slot) for slot, state in self._slots.items() if state.cached and slot != exclude]
        return min(cached)[1] if cached else None

    def _holder(self, chain: list[Block]) -> int:
        """A slot holding ``chain``: a cached one if any (to be taken over), the one with the fewest blocks
        past the chain (the least to lose), the most recently cached of those (the others wait to expire);
        else a running one."""

        def rank(slot: int) -> tuple[bool, int, int, int]:
            state = self._slots[slot]
            return not state.cached, len(state.blocks) - len(chain), -state.last_used, slot

        return min(chain[-1].holders, key=rank)

    def _acquire(self, exclude: int | None) -> int | None:
        while not self._free:
            if not self._evict_one(exclude):
                return None
        slot = self._free.pop()
        self._slots[slot] = _Slot()
        return slot

    def _share(self, src: int, dst: int, chain: list[Block], extra: int = 0) -> None:
        """``dst`` gets ``chain`` and the next ``extra`` positions of ``src``. A cached ``src`` (a head shorter
        than a block) keeps its place in the eviction order: ``dst`` holds those positions itself now."""
        for block in chain:
            block.holders.add(dst)
        self._slots[dst].blocks = list(chain)
        if not self._slots[src].cached:
            self._slots[src].last_used = next(self._clock)
        self._record(ShareOp(src, dst, BLOCK_SIZE * len(chain) + extra))

    def _truncate(self, slot: int, num_blocks: int, keep: int = 0) -> None:
        """Keep the first ``num_blocks`` blocks of ``slot`` in its accounts, and ``keep`` more
        positions in llama.cpp (the caller counts them as the slot's tail)."""
        state = self._slots[slot]
        for block in state.blocks[num_blocks:]:
            self._drop(block, slot)
        del state.blocks[num_blocks:]
        self._record(RemoveOp(slot, BLOCK_SIZE * num_blocks + keep))

    def _drop(self, block: Block, slot: int) -> None:
        block.holders.discard(slot)
        if not block.holders:
            self._live_blocks -= 1
            if self._index.get(block.hash) is block:
                del self._index[block.hash]

    def _evict_one(self, exclude: int | None = None) -> bool:
        """Release the least recently used cached slot (other than ``exclude``)."""
        victim = self._least_recently_used(exclude)
        if victim is None:
            return False
        self._release(victim)
        self.evictions += 1
        return True

    def _room_keeping(self, chain: list[Block], source: int | None) -> int:
        """Cells a sequence sharing ``chain`` from ``source`` could have: free, reclaimable from the
        cached slots that do not hold the chain, and the blocks past the chain that ``source``
        alone holds if it is a cached slot to be taken over (and so truncated to the chain)."""
        room = self.free_cells + self._reclaimable(keep=chain)
        if source is not None and self._slots[source].cached:
            room += BLOCK_SIZE * sum(b.holders == {source} for b in self._slots[source].blocks[len(chain) :])
        return room

    def _reclaimable(self, keep: list[Block]) -> int:
        """Cells that evicting every cached slot (but those holding ``keep``) would free."""
        kept = {id(b) for b in keep}
        evictable = {
            slot for slot, state in self._slots.items() if state.cached and not any(id(b) in kept for b in state.blocks)
        }
        blocks = {id(b): b for s in evictable for b in self._slots[s].blocks}
        return BLOCK_SIZE * sum(b.holders <= evictable for b in blocks.values())

    # --- invariants ---

    def check_integrity(self, computed: Mapping[int, int]) -> None:
        """Check the accounts; ``computed`` is slot → positions llama.cpp holds, for every slot.

        Called between steps, when every reserved cell has been decoded into.
        """
        if sorted(self._free + list(self._slots)) != list(range(self.num_slots)):
            raise KVIntegrityError(f"slots lost or doubled: free={self._free} used={sorted(self._slots)}")
        live = {id(b): b for state in self._slots.values() for b in state.blocks}
        if len(live) != self._live_blocks or sum(s.tail for s in self._slots.values()) != self._tails:
            raise KVIntegrityError(f"{len(live)} live blocks vs {self._live_blocks} counted")
        for slot, state in self._slots.items():
            if any(slot not in b.holders for b in state.blocks):
                raise KVIntegrityError(f"slot {slot} holds a block that does not know it")
        for block in live.values():
            if any(block not in self._slots[s].blocks for s in block.holders):
                raise KVIntegrityError(f"block {block.hash.hex()} lists a holder that lost it")
        if any(b.hash != h or id(b) not in live for h, b in self._index.items()):
            raise KVIntegrityError("the prefix index points at a dead or renamed block")
        if self.reclaimable_cells != self._reclaimable(keep=[]):
            raise KVIntegrityError("the remembered count of reclaimable cells is stale")
        if not 0 <= self.used_cells <= self.total_cells:
            raise KVIntegrityError(f"used cells {self.used_cells} outside 0..{self.total_cells}")
        held = {slot: n for slot in self._slots if (n := self.cells_of(slot))}  # admitted, not prefilled yet: 0
        expected = {slot: n for slot, n in computed.items() if n}
        if held != expected:
            raise KVIntegrityError(f"cells per slot {held} != positions llama.cpp holds {expected}")
