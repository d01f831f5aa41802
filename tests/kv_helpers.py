"""Stand-ins for driving the KV managers (kv_cache.py, stream_cache.py) on plain data in tests."""

from __future__ import annotations

from lmgate.backends.llamacpp.kv_cache import (
    BLOCK_SIZE,
    CopyOp,
    ForgetOp,
    MemoryOp,
    RemoveOp,
    RestoreOp,
    ShareOp,
    SpillOp,
    extend_chain,
)
from lmgate.backends.llamacpp.kv_manager import KVManager

B = BLOCK_SIZE


def hashes(*names: str) -> list[bytes]:
    """Chain hashes stand-ins: block i of a prompt 'ab' is b'a', b'ab'..."""
    out, chain = [], b""
    for name in names:
        chain += name.encode()
        out.append(chain)
    return out


def chain_of(ids: list[int], seed: bytes = b"") -> list[bytes]:
    """The real chain hashes of ``ids``'s full blocks (block 0's from ``seed``, a tenant's: sequence.py)."""
    return extend_chain([], seed, ids)


def tokens_of(*blocks: int, tail: tuple[int, ...] = ()) -> list[int]:
    """Token ids: a block per number (its value repeated), then ``tail``."""
    return [t for b in blocks for t in [b] * B] + list(tail)


def fill(kv: KVManager, chain: list[bytes], tokens: int, ids: list[int] | None = None) -> int:
    """Admit a sequence of ``tokens`` and compute all of it; returns its slot."""
    admission = kv.admit(chain, tokens, ids or [])
    assert admission is not None
    assert kv.allocate(admission.slot, tokens - admission.cached_tokens)
    kv.commit(admission.slot, chain, ids or [])
    return admission.slot


class FakeLlama:
    """What llama.cpp would hold after a manager's ops: positions 0..n of each slot, and host copies."""

    def __init__(self) -> None:
        self.held: dict[int, int] = {}
        self.copies: dict[int, int] = {}

    def apply(self, ops: tuple[MemoryOp, ...]) -> None:
        for op in ops:
            if isinstance(op, RemoveOp):
                self.held[op.slot] = min(self.held.get(op.slot, 0), op.from_pos)
            elif isinstance(op, ShareOp):
                self.held[op.dst] = max(self.held.get(op.dst, 0), min(op.num_tokens, self.held.get(op.src, 0)))
            elif isinstance(op, CopyOp):
                assert self.held.get(op.dst, 0) == 0, "copied over a slot in use"
                self.held[op.dst] = min(self.held.get(op.src, 0), op.num_tokens)
            elif isinstance(op, SpillOp):
                assert self.held.get(op.slot, 0) > 0, "a copy of nothing"
                self.copies[op.key] = self.held[op.slot]
            elif isinstance(op, RestoreOp):
                assert self.held.get(op.slot, 0) == 0, "restored over a slot in use"
                self.held[op.slot] = self.copies.pop(op.key)
            elif isinstance(op, ForgetOp):
                del self.copies[op.key]
