"""A sequence: one choice of one request, as the scheduler and runner see it.

``token_ids`` holds the prompt and every token sampled so far; ``num_computed_tokens`` counts the
ones whose KV is in the cache. Prefill, chunked prefill and recompute after preemption are the
same thing: ``num_computed_tokens`` catching up to ``num_tokens`` (the vLLM v1 shape). The last
sampled token is never computed until the next step decodes it.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lmgate.backends.engine.beam_search import BeamSearch
from lmgate.backends.engine.output_text import OutputText
from lmgate.backends.llamacpp.kv_cache import BLOCK_SIZE, extend_chain
from lmgate.backends.types import FinishReason, SamplingParams

if TYPE_CHECKING:
    from llguidance import LLMatcher


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()  # in the queue, holds no slot and no KV
    RUNNING = enum.auto()  # holds a slot and the KV of its computed tokens
    FINISHED = enum.auto()  # done; slot and KV released


@dataclass(eq=False)
class Sequence:
    """Mutable state of one choice. Owned by the engine thread; nothing else touches it."""

    request_id: str
    index: int
    token_ids: list[int]
    sampling: SamplingParams
    max_tokens: int
    arrival: int
    output: OutputText
    num_prompt_tokens: int = 0
    num_computed_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    slot: int | None = None
    finish_reason: FinishReason | None = None
    num_cached_tokens: int = 0
    """Prompt tokens found in the prefix cache at first admission, reported in usage."""
    num_preemptions: int = 0
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    """When its first chunk was scheduled (set by the engine)."""
    beam: BeamSearch[Sequence] | None = None
    """The beam search this sequence is a beam of; its tokens are chosen by the search, not sampled."""
    matcher: LLMatcher | None = None
    """Its structured output's ``llguidance.LLMatcher`` (backends/llamacpp/grammar.py), fed every
    sampled token; None when the output is free."""
    shown: Mapping[int, bytes] | None = None
    """Special tokens whose text its output shows although their pieces are empty: the call markers of
    a request with tools that the vocabulary holds as control tokens (Mistral's ``[TOOL_CALLS]``), for
    the gateway's tool-call parser. None: output text is the pieces, as for every other request."""
    cache_salt: bytes = b""
    """The tenant's prefix-cache partition (GenerateRequest.cache_salt): the first block's hash starts
    from it, so blocks are found only by sequences with the same salt. Empty: today's shared cache."""
    adapter: str | None = None
    """The LoRA adapter it runs with (None: the base model). The scheduler decodes one adapter's
    sequences per step, and the first block's hash starts from it too: KV computed with one adapter
    is never shared with the base model or another adapter."""
    _hashes: list[bytes] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.token_ids)

    @property
    def queue_time(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.queued_at

    @property
    def key(self) -> tuple[str, int]:
        return (self.request_id, self.index)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    def block_hashes(self) -> list[bytes]:
        """Chained hashes of every full block of ``token_ids`` (kv_cache.extend_chain: computed once,
        extended as it grows), block 0's from ``hash_seed``: equal hashes mean equal prefixes of the same
        tenant computed with the same weights."""
        return extend_chain(self._hashes, self.hash_seed, self.token_ids)

    @functools.cached_property
    def hash_seed(self) -> bytes:
        """What block 0's hash starts from: the cache salt and the LoRA adapter (its tenant), fixed for its life."""
        return _seed(self.cache_salt, self.adapter)

    def append(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def fork(self, token_id: int, slot: int) -> Sequence:
        """A copy continuing with ``token_id`` whose KV (all computed positions) is shared in ``slot``."""
        child = Sequence(
            self.request_id, self.index, [*self.token_ids, token_id], self.sampling, self.max_tokens, self.arrival,
            OutputText(), beam=self.beam, shown=self.shown, cache_salt=self.cache_salt, adapter=self.adapter,
        )  # fmt: skip
        child.num_prompt_tokens = self.num_prompt_tokens
        child.num_computed_tokens = self.num_computed_tokens
        child.num_cached_tokens = self.num_cached_tokens
        child.status, child.slot = SequenceStatus.RUNNING, slot
        child._hashes = self._hashes[: self.num_computed_tokens // BLOCK_SIZE]
        return child

    def reset_for_recompute(self) -> None:
        """Preempted: forget the KV, keep every token; it will be recomputed from scratch."""
        self.status = SequenceStatus.WAITING
        self.slot = None
        self.num_computed_tokens = 0
        self.num_preemptions += 1


def _seed(cache_salt: bytes, adapter: str | None) -> bytes:
    """What block 0's hash starts from: nothing without a salt or an adapter (hashes as before salts
    existed), else a digest of them in a namespace of its own, so that neither can pose as a parent
    block's hash. The salt's digest goes first with its length, so salt and adapter name cannot run together."""
    salt = hashlib.blake2b(cache_salt, digest_size=16, person=b"lmgate-salt").digest() if cache_salt else b""
    if adapter is None:
        return salt
    return hashlib.blake2b(bytes([len(salt)]) + salt + adapter.encode(), digest_size=16, person=b"lmgate-lora").digest()
