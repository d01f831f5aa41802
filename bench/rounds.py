"""Interleaved rounds: how the benchmarks compare servers on a machine whose speed drifts.

Every server of a scenario is up at once, and each round runs the scenario on every server in turn,
starting one server later each round, so that a slow minute of the machine (another tenant, a
thermal limit) falls on all of them alike. A sweep over concurrency levels goes level by level, every
server in turn at each level (``interleave_levels``), so the runs a ratio compares are seconds apart, not the
minutes a whole round of one server takes. A figure is then the median of its rounds, shown with the
min–max range of the rounds; a ratio between two servers is the median of the per-round ratios (the
two ran in the same round: seconds apart in a sweep, minutes apart in a scenario run whole).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Spread:
    """The median of a figure over its rounds and the range the rounds span."""

    median: float
    low: float
    high: float
    rounds: int

    def show(self, fmt: str = ".1f", unit: str = "") -> str:
        """``"53.4 (50.1–55.0)"``; one round gives the bare value."""
        text = f"{self.median:{fmt}}{unit}"
        return text if self.rounds == 1 else f"{text} ({self.low:{fmt}}–{self.high:{fmt}})"


def spread(values: Iterable[float]) -> Spread:
    """The spread of ``values`` (one per round; at least one)."""
    v = list(values)
    if not v:
        raise ValueError("a spread needs at least one round")
    return Spread(statistics.median(v), min(v), max(v), len(v))


def ratios(ours: Sequence[float], theirs: Sequence[float]) -> Spread:
    """The spread of the per-round ratios ``ours[i] / theirs[i]`` (rounds paired by index)."""
    return spread(a / b for a, b in zip(ours, theirs, strict=True))


def interleave(rounds: int, names: Sequence[T]) -> Iterator[tuple[int, T]]:
    """``(round, name)`` in running order: every name once per round, each round starting one later."""
    for r in range(rounds):
        for name in rotate(names, r):
            yield r, name


def interleave_levels(rounds: int, names: Sequence[T], levels: Sequence[int]) -> Iterator[tuple[int, int, T]]:
    """``(round, level, name)`` in running order for a sweep: level by level, every name at each level,
    who starts rotating by round and by level."""
    for r in range(rounds):
        for i, level in enumerate(levels):
            for name in rotate(names, r + i):
                yield r, level, name


def rotate(names: Sequence[T], start: int) -> list[T]:
    """``names`` in running order starting at ``start`` (modulo their number)."""
    return [names[(start + k) % len(names)] for k in range(len(names))]


def by_level(runs: Sequence[Sequence[T]]) -> list[list[T]]:
    """A sweep's reports, rounds × levels, turned into levels × rounds."""
    return [list(level) for level in zip(*runs, strict=True)]
