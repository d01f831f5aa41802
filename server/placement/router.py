"""Which replica of a model serves a request: pure policy on plain data (no I/O, no asyncio).

- **Least outstanding tokens**: the healthy replica with the fewest tokens in flight (prompt
  estimate + max_tokens of every open request), ties to the lowest index.
- **Prefix affinity**: bounded-load consistent hashing (Mirrokni et al.). The affinity key (the
  first bytes of the prompt or chat prefix) is hashed onto a ring of virtual nodes; the request
  goes to the first replica clockwise whose load stays within ``(1 + epsilon)`` × the average, so
  a repeated system prompt lands on the replica whose prefix cache already holds it, and a hot
  prefix spills over instead of overloading one replica.
- **Health**: ``failures_to_eject`` consecutive failures eject a replica for ``eject_s`` seconds;
  after that it is tried again (and ejected again at once if it fails).

Time is passed in (``now``), so tests drive it by hand.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import math
from dataclasses import dataclass, field


class Policy(enum.StrEnum):
    LEAST_OUTSTANDING = "least_outstanding"
    PREFIX_AFFINITY = "prefix_affinity"


@dataclass
class ReplicaState:
    """What the router knows of one replica; mutated only through ``Router``."""

    index: int
    outstanding_tokens: int = 0
    open_requests: int = 0
    consecutive_failures: int = 0
    ejected_until: float = 0.0

    def available(self, now: float) -> bool:
        return now >= self.ejected_until


@dataclass(frozen=True)
class RouterConfig:
    policy: Policy = Policy.PREFIX_AFFINITY
    epsilon: float = 0.25
    """Bounded load: a replica takes an affine request while its load ≤ (1 + epsilon) × average."""
    virtual_nodes: int = 64
    failures_to_eject: int = 3
    eject_s: float = 10.0


@dataclass
class Router:
    """One pool's replicas and the choice among them."""

    replicas: list[ReplicaState]
    config: RouterConfig = field(default_factory=RouterConfig)
    _ring: list[tuple[int, int]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self._ring = sorted(
            (_hash(f"{r.index}#{v}".encode()), r.index) for r in self.replicas for v in range(self.config.virtual_nodes)
        )

    @classmethod
    def of(cls, size: int, config: RouterConfig | None = None) -> Router:
        return cls([ReplicaState(i) for i in range(size)], config or RouterConfig())

    def available(self, now: float) -> list[ReplicaState]:
        return [r for r in self.replicas if r.available(now)]

    def pick(self, now: float, affinity_key: bytes | None = None, exclude: frozenset[int] = frozenset()) -> int | None:
        """The replica for a request (None when every replica is ejected or excluded)."""
        candidates = [r for r in self.available(now) if r.index not in exclude]
        if not candidates:
            return None
        if self.config.policy is Policy.PREFIX_AFFINITY and affinity_key is not None and len(candidates) > 1:
            return self._affine(candidates, affinity_key)
        return min(candidates, key=lambda r: (r.outstanding_tokens, r.index)).index

    def _affine(self, candidates: list[ReplicaState], key: bytes) -> int:
        allowed = {r.index: r for r in candidates}
        total = sum(r.open_requests for r in candidates) + 1
        bound = math.ceil((1 + self.config.epsilon) * total / len(candidates))
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
