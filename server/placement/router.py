"""Which replica of a model serves a request: pure policy on plain data (no I/O, no asyncio).

- **Least outstanding tokens**: the healthy replica with the fewest tokens in flight (prompt
  estimate + max_tokens of every open request), ties to the lowest index.
- **Prefix affinity**: first the longest cached prefix: each replica's ``PrefixIndex`` remembers
  the chained block keys of what was routed to it (server/placement/prefix_index.py), and the
  request goes to the replica holding most of its leading blocks, among those whose load stays
  within ``(1 + epsilon)`` × the average (a hot prefix spills over instead of overloading one
  replica). With no match anywhere, bounded-load consistent hashing (Mirrokni et al.): the affinity
  key (a chat's instructions, a prompt's start) is hashed onto a ring of virtual nodes and the
  request goes to the first replica clockwise within the bound, so the first users of a new system
  prompt meet on one replica (and several gateways agree where) before any index knows it.
- **Health**: ``failures_to_eject`` consecutive failures eject a replica for ``eject_s`` seconds;
  after that it is tried again (and ejected again at once if it fails).

Time is passed in (``now``), so tests drive it by hand.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field

from lmgate.server.placement.prefix_index import PrefixIndex


class Policy(enum.StrEnum):
    LEAST_OUTSTANDING = "least_outstanding"
    PREFIX_AFFINITY = "prefix_affinity"
    ROUND_ROBIN = "round_robin"
    """Each replica in turn (what a Kubernetes Service's DNS gives): the fleet benchmark's baseline."""


class Reason(enum.StrEnum):
    """Why a replica was chosen (the ``reason`` label of ``lmgate_router_decisions_total``)."""

    PREFIX = "prefix"  # it holds the longest run of the request's leading blocks
    AFFINITY = "affinity"  # no replica holds any: the affinity key's place on the ring
    LEAST_OUTSTANDING = "least_outstanding"  # the policy, or a request without a key
    ROUND_ROBIN = "round_robin"  # the policy
    ONLY = "only"  # one replica could take it


@dataclass
class ReplicaState:
    """What the router knows of one replica; mutated only through ``Router``."""

    index: int
    outstanding_tokens: int = 0
    open_requests: int = 0
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    prefixes: PrefixIndex = field(default_factory=PrefixIndex)

    def available(self, now: float) -> bool:
        return now >= self.ejected_until


@dataclass(frozen=True)
class RouterConfig:
    policy: Policy = Policy.PREFIX_AFFINITY
    epsilon: float = 1.0
    """Bounded load: a replica takes an affine request while its load ≤ (1 + epsilon) × average
    (the model's ``affinity_max_load`` is 1 + epsilon; the fleet benchmark chose 2: at 1.25 hot
    tenants spilled often enough to cost a tenth of the hit rate)."""
    virtual_nodes: int = 64
    failures_to_eject: int = 3
    eject_s: float = 10.0


@dataclass
class Router:
    """One pool's replicas and the choice among them."""

    replicas: list[ReplicaState]
    config: RouterConfig = field(default_factory=RouterConfig)
    decisions: Counter[Reason] = field(default_factory=Counter)
    blocks_looked_up: int = 0
    blocks_matched: int = 0
    """Leading blocks of requests routed by prefix, and of those, blocks the chosen replica held."""
    _ring: list[tuple[int, int]] = field(init=False, default_factory=list)
    _turn: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._ring = sorted(
            (_hash(f"{r.index}#{v}".encode()), r.index) for r in self.replicas for v in range(self.config.virtual_nodes)
        )

    @classmethod
    def of(cls, size: int, config: RouterConfig | None = None) -> Router:
        return cls([ReplicaState(i) for i in range(size)], config or RouterConfig())

    def available(self, now: float) -> list[ReplicaState]:
        return [r for r in self.replicas if r.available(now)]

    def pick(
        self, now: float, affinity_key: bytes | None = None, exclude: frozenset[int] = frozenset(),
        blocks: list[bytes] | None = None,
    ) -> int | None:  # fmt: skip
        """The replica for a request (None when every replica is ejected or excluded); ``blocks`` (its
        chained prefix keys) are remembered as the chosen replica's."""
        candidates = [r for r in self.available(now) if r.index not in exclude]
        if not candidates:
            return None
        index, reason = self._choose(candidates, affinity_key, blocks or [])
        self.decisions[reason] += 1
        if blocks:
            self.replicas[index].prefixes.add(blocks)
        return index

    def _choose(self, candidates: list[ReplicaState], key: bytes | None, blocks: list[bytes]) -> tuple[int, Reason]:
        affine = self.config.policy is Policy.PREFIX_AFFINITY
        if len(candidates) == 1:
            return candidates[0].index, Reason.ONLY
        if self.config.policy is Policy.ROUND_ROBIN:
            self._turn += 1
            return candidates[self._turn % len(candidates)].index, Reason.ROUND_ROBIN
        if not affine or (key is None and not blocks):
            return min(candidates, key=lambda r: (r.outstanding_tokens, r.index)).index, Reason.LEAST_OUTSTANDING
        total = sum(r.open_requests for r in candidates) + 1
        bound = math.ceil((1 + self.config.epsilon) * total / len(candidates))
        within = [r for r in candidates if r.open_requests + 1 <= bound]
        if blocks:
            self.blocks_looked_up += len(blocks)
            matches = {r.index: r.prefixes.match(blocks) for r in within}
            best = max(within, key=lambda r: (matches[r.index], -r.open_requests, -r.index))
            if matches[best.index]:
                self.blocks_matched += matches[best.index]
                return best.index, Reason.PREFIX
        return self._affine(candidates, key or blocks[0], bound), Reason.AFFINITY

    def _affine(self, candidates: list[ReplicaState], key: bytes, bound: int) -> int:
        allowed = {r.index: r for r in candidates}
        start = bisect.bisect(self._ring, (_hash(key), -1))
        for offset in range(len(self._ring)):
            index = self._ring[(start + offset) % len(self._ring)][1]
            replica = allowed.get(index)
            if replica is not None and replica.open_requests + 1 <= bound:
                return index
        return min(candidates, key=lambda r: (r.open_requests, r.index)).index  # unreachable: the bound fits one

    def started(self, index: int, tokens: int) -> None:
        replica = self.replicas[index]
        replica.outstanding_tokens += tokens
        replica.open_requests += 1

    def ended(self, index: int, tokens: int) -> None:
        replica = self.replicas[index]
        replica.outstanding_tokens -= tokens
        replica.open_requests -= 1

    def succeeded(self, index: int) -> None:
        self.replicas[index].consecutive_failures = 0

    def failed(self, index: int, now: float) -> None:
        """The replica could not serve (unreachable, unavailable); enough of these eject it."""
        replica = self.replicas[index]
        replica.consecutive_failures += 1
        # The count survives the ejection: a replica back from one goes again at its first failure.
        if replica.consecutive_failures >= self.config.failures_to_eject:
            replica.ejected_until = now + self.config.eject_s


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
