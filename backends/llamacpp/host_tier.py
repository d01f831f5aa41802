"""Cached prefixes moved out of llama.cpp's KV cache into host RAM: their index and their budget.

A cold cached prefix in the unified KV cache costs every token the engine computes, since attention
scans the cache's whole occupied span (kv_cache.py). A copy in host memory costs nothing while it
waits: llama.cpp writes a sequence's cells out (``llama_state_seq_get_data``, a few µs per token) and
reads them back into a free sequence id (``llama_state_seq_set_data``, about 1 µs per token), where
recomputing a prompt token costs milliseconds. llama-server keeps such copies too (``--cache-ram``).

This class only keeps the accounts: which copies exist, what prefix each holds (the chain hashes
and token ids of its full blocks), and the cells they add up to, least recently stored first out
beyond ``max_cells``. The bytes live in the runner, under the same keys.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

StoredBlock = tuple[bytes, tuple[int, ...]]
"""A block's chain hash and its token ids."""


@dataclass(frozen=True, slots=True)
class HostCopy:
    blocks: tuple[StoredBlock, ...]
    cells: int
    """Positions the copy holds (its full blocks)."""


class HostTier:
    """Owned by the KV cache manager, on the engine thread."""

    def __init__(self, max_cells: int) -> None:
        if max_cells <= 0:
            raise ValueError(f"a host tier needs room, got max_cells={max_cells}")
        self.max_cells = max_cells
        self.cells = 0
        self._copies: dict[int, HostCopy] = {}  # oldest first
        self._index: dict[bytes, set[int]] = {}  # chain hash → copies holding that prefix
        self._keys = itertools.count()
        self.stored = 0
        self.restored = 0

    def __len__(self) -> int:
        return len(self._copies)

    def keys(self) -> set[int]:
        return set(self._copies)

    def add(self, blocks: Sequence[StoredBlock], cells: int) -> tuple[int, list[int]]:
        """Index a copy of ``cells`` positions holding ``blocks``: its key, and the keys of the oldest
        copies dropped to make room (the caller frees their bytes)."""
        key = next(self._keys)
        self._copies[key] = HostCopy(tuple(blocks), cells)
        for block_hash, _ in blocks:
            self._index.setdefault(block_hash, set()).add(key)
        self.cells += cells
        self.stored += 1
        dropped = []
        while self.cells > self.max_cells:
            oldest = next(iter(self._copies))
            self._remove(oldest)
            dropped.append(oldest)
        return key, dropped

    def match(self, hashes: Sequence[bytes]) -> tuple[int | None, int]:
        """The copy holding the longest prefix of ``hashes`` (the newest of equals) and how many blocks of
        it match; (None, 0) when none holds the first. Hashes are chained, so a copy that holds block i
        of the prefix holds every block before it."""
        best: int | None = None
        depth = 0
        for block_hash in hashes:
            holders = self._index.get(block_hash)
            if not holders:
                break
            best, depth = max(holders), depth + 1
        return best, depth

    def cells_of(self, key: int) -> int:
        return self._copies[key].cells

    def take(self, key: int) -> HostCopy:
        """Remove copy ``key`` from the tier (it goes back into the KV cache) and return it."""
        copy = self._copies[key]
        self._remove(key)
        self.restored += 1
        return copy

    def _remove(self, key: int) -> None:
        copy = self._copies.pop(key)
        self.cells -= copy.cells
        for block_hash, _ in copy.blocks:
            holders = self._index[block_hash]
            holders.discard(key)
            if not holders:
                del self._index[block_hash]
