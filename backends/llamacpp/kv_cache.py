"""Book-keeping of llama.cpp's unified KV cache: cells, and the sequence-id slots that own them.

The context is created with ``kv_unified``: ``total_cells`` cells shared by up to ``num_slots``
llama.cpp sequence ids, so one long sequence may use what many short ones leave free. This class
does no I/O: it decides, and the runner tells llama.cpp (a released slot is queued until the
runner has removed its cells with ``llama_memory_seq_rm``).

Running out of cells is a value, not an exception: ``allocate`` returns False and the scheduler
preempts.
"""

from __future__ import annotations

from collections.abc import Mapping


class KVIntegrityError(AssertionError):
    """The book-keeping disagrees with itself or with the sequences: a bug, never user input."""


class KVCacheManager:
    """Cell accounting per slot. Owned by the engine thread."""

    def __init__(self, total_cells: int, num_slots: int) -> None:
        if total_cells <= 0 or num_slots <= 0:
            raise ValueError(f"need cells and slots, got total_cells={total_cells} num_slots={num_slots}")
        self.total_cells = total_cells
        self.num_slots = num_slots
        self._free_slots = list(range(num_slots - 1, -1, -1))  # pop() hands out 0 first
        self._cells: dict[int, int] = {}
        self._used = 0
        self._to_clear: list[int] = []

    @property
    def used_cells(self) -> int:
        return self._used

    @property
    def free_cells(self) -> int:
        return self.total_cells - self._used

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    def cells_of(self, slot: int) -> int:
        return self._cells[slot]

    def acquire_slot(self) -> int | None:
        """A free sequence id holding no cells, or None when every slot is taken."""
        if not self._free_slots:
            return None
        slot = self._free_slots.pop()
        self._cells[slot] = 0
        return slot

    def allocate(self, slot: int, num_cells: int) -> bool:
        """Reserve ``num_cells`` more cells for ``slot``; False (and nothing reserved) if they don't fit."""
        if num_cells > self.free_cells:
            return False
        self._cells[slot] += num_cells
        self._used += num_cells
        return True

    def release(self, slot: int) -> None:
        """Give back the slot and all its cells; the runner must clear it before it is decoded into."""
        self._used -= self._cells.pop(slot)
        self._free_slots.append(slot)
        self._to_clear.append(slot)

    def take_slots_to_clear(self) -> tuple[int, ...]:
        """Slots released since the last call, whose cells llama.cpp still holds."""
        slots, self._to_clear = tuple(self._to_clear), []
        return slots

    def check_integrity(self, computed: Mapping[int, int]) -> None:
        """Check the invariants against ``computed`` (slot → tokens whose KV the runner holds).

        Called between steps, when every reserved cell has been decoded into.
        """
        if sorted(self._free_slots + list(self._cells)) != list(range(self.num_slots)):
            raise KVIntegrityError(f"slots lost or doubled: free={self._free_slots} used={sorted(self._cells)}")
        if self._used != sum(self._cells.values()) or not 0 <= self._used <= self.total_cells:
            raise KVIntegrityError(f"used={self._used} but slots hold {sum(self._cells.values())}")
        if dict(computed) != self._cells:
            raise KVIntegrityError(f"cells per slot {self._cells} != computed tokens {dict(computed)}")
