"""Beam search policy on hand-made log-probabilities."""

import math

import pytest

from lmgate.backends.engine.beam_search import BeamSearch
from lmgate.backends.types import FinishReason

EOS = 0


def lp(p: float) -> float:
    return math.log(p)


def cands(search: BeamSearch, table: dict[tuple[int, ...], list[tuple[int, float]]]):
    return {id(b): [(t, lp(p)) for t, p in table[tuple(b.output)]] for b in search.live}


def test_beam_search_finds_the_sequence_greedy_misses():
    # Greedy takes 1 (0.6) then 0.4 at best: 0.24. Beam keeps 2 (0.4) whose next is 0.9: 0.36.
    table = {
        (): [(1, 0.6), (2, 0.4)],
        (1,): [(3, 0.4), (4, 0.35), (EOS, 0.25)],
        (2,): [(5, 0.9), (EOS, 0.1)],
        (1, 3): [(EOS, 1.0)], (1, 4): [(EOS, 1.0)], (2, 5): [(EOS, 1.0)],
    }  # fmt: skip
    search = BeamSearch(width=2, n=1, max_tokens=10, end_tokens=frozenset({EOS}), length_penalty=0.0)
    search.live[0].key = "root"
    first = search.step(cands(search, table))
    assert [(c.parent.key, c.token) for c in first] == [("root", 1), ("root", 2)]
    assert [b.key for b in search.live] == ["root", None]  # the second continuation forks
    search.step(cands(search, table))
    while not search.done:
        search.step(cands(search, table))
    [best] = search.best()
    assert best.output == (2, 5) and best.finish_reason is FinishReason.STOP
    assert best.logprob == pytest.approx(lp(0.4 * 0.9))


def test_max_tokens_ends_every_beam_with_length():
    table = {(): [(1, 0.5), (2, 0.5)], (1,): [(3, 0.5), (4, 0.5)], (2,): [(5, 0.5), (6, 0.5)]}
    search = BeamSearch(width=2, n=2, max_tokens=2, end_tokens=frozenset({EOS}))
    search.step(cands(search, table))
    search.step(cands(search, table))
    assert search.done and not search.live
    best = search.best()
    assert len(best) == 2 and all(h.finish_reason is FinishReason.LENGTH and len(h.output) == 2 for h in best)


def test_length_penalty_prefers_longer_hypotheses():
    search = BeamSearch(width=2, n=2, max_tokens=10, end_tokens=frozenset({EOS}), length_penalty=1.0)
    search._finish([1], lp(0.5), FinishReason.STOP)  # score log(0.5)/1
    search._finish([1, 2, 3], lp(0.3), FinishReason.STOP)  # score log(0.3)/3, higher
    search.live = []
    assert [h.output for h in search.best()] == [(1, 2, 3), (1,)]


def test_n_cannot_exceed_the_width():
    with pytest.raises(ValueError):
        BeamSearch(width=2, n=3, max_tokens=4, end_tokens=frozenset())
