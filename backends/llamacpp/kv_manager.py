"""What the scheduler, the speculator and the engine need of a KV book-keeper: the contract both layouts
keep, the unified cache (kv_cache.py) and the per-sequence streams (stream_cache.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from lmgate.backends.llamacpp.host_tier import HostTier
from lmgate.backends.llamacpp.kv_cache import Admission, MemoryOp


class KVManager(Protocol):
    """Slots (llama.cpp sequence ids) and their cells, on the engine thread. Records ``MemoryOp``s that
    the runner applies in order before the next decode; does no I/O itself."""

    num_slots: int
    total_cells: int
    host: HostTier | None
    prefix_queries: int
    """Prompt tokens looked up in the prefix cache."""
    prefix_hits: int
    """Of those, the tokens found (not computed)."""
    evictions: int
    """Cached prefixes dropped or moved to the host tier to make way."""

    @property
    def used_cells(self) -> int: ...

    @property
    def reclaimable_cells(self) -> int:
        """Cells only cached (finished) slots hold."""
        ...

    def cells_of(self, slot: int) -> int:
        """Positions ``slot`` holds."""
        ...

    def room(self, slot: int) -> int:
        """Cells ``slot`` can grow by without evicting anything."""
        ...

    def admit(
        self, hashes: list[bytes], num_tokens: int, tokens: Sequence[int] = (), seed: bytes | None = None
    ) -> Admission | None:
        """A slot for a new sequence, holding the longest cached prefix it can reuse; None: not now.
        ``seed``: what its block 0 hashes from (its tenant), for prefixes shorter than a block."""
        ...

    def fork(self, src: int) -> int | None:
        """A new slot holding every position ``src`` holds; None: no slot or room."""
        ...

    def pack(self) -> list[tuple[int, int]]:
        """Move running sequences so their slots are consecutive where the layout gains by it: ``(from, to)``
        per move, in order; the caller re-points the sequences. Between steps only."""
        ...

    def allocate(self, slot: int, num_cells: int) -> bool:
        """Reserve cells for ``slot``; False (nothing reserved): the caller preempts."""
        ...

    def shrink(self, slot: int, num_cells: int) -> None:
        """Give back the last ``num_cells`` reserved cells of ``slot``."""
        ...

    def commit(self, slot: int, hashes: list[bytes], tokens: Sequence[int] = ()) -> None:
        """The reserved cells were decoded into: completed blocks become reusable."""
        ...

    def release(self, slot: int) -> None:
        """Give back the slot and its cells."""
        ...

    def cache(self, slot: int) -> None:
        """Keep the slot's full blocks as a cached prefix."""
        ...

    def advance(self, num_tokens: int) -> None:
        """The engine computed ``num_tokens`` more tokens (cached prefixes may expire)."""
        ...

    def take_ops(self) -> tuple[MemoryOp, ...]:
        """Memory operations recorded since the last call, in order."""
        ...

    def check_integrity(self, computed: Mapping[int, int]) -> None:
        """Raise ``KVIntegrityError`` unless the accounts agree with ``computed`` (slot → positions held)."""
        ...
