"""Prompt lookup (backends/llamacpp/ngram.py): which tokens it proposes, and that its incremental
index answers as a fresh one would."""

import random

import pytest

from lmgate.backends.llamacpp.ngram import NgramIndex


def propose(tokens: list[int], k: int = 4, lo: int = 1, hi: int = 3) -> list[int]:
    return NgramIndex(lo, hi).propose(tokens, k)


def test_proposes_what_followed_the_earlier_occurrence_of_the_suffix():
    assert propose([5, 6, 7, 8, 9, 1, 5, 6]) == [7, 8, 9, 1]


def test_the_longest_matching_suffix_wins_over_a_later_shorter_one():
    # "2 3" followed by 4 earlier; "3" alone was followed by 9 later.
    assert propose([2, 3, 4, 0, 3, 9, 0, 2, 3], k=1) == [4]


def test_of_equal_matches_the_latest_occurrence_wins():
    assert propose([1, 2, 1, 3, 1], k=1) == [3]


def test_no_match_proposes_nothing_and_the_suffix_never_matches_itself():
    assert propose([1, 2, 3, 4]) == []
    assert propose([7]) == []
    assert propose([]) == []


def test_a_match_near_the_end_continues_into_its_own_proposal():
    # "a b a b a b": the suffix (a, b) last followed at position 4; the cycle goes on.
    assert propose([1, 2, 1, 2, 1, 2], k=5) == [1, 2, 1, 2, 1]
    assert propose([4, 4, 4], k=3) == [4, 4, 4]


def test_ngram_min_above_one_ignores_single_token_matches():
    assert propose([1, 9, 5, 1], lo=2) == []
    assert propose([1, 9, 5, 1], lo=1) == [9, 5, 1, 9]


def test_k_limits_and_zero_proposes_nothing():
    assert propose([5, 6, 7, 8, 5], k=2) == [6, 7]
    assert propose([5, 6, 7, 8, 5], k=0) == []


def test_incremental_growth_answers_exactly_as_a_fresh_index():
    rng = random.Random(3)
    tokens: list[int] = []
    index = NgramIndex(1, 3)
    for _ in range(400):
        tokens.extend(rng.choice([[rng.randrange(6)], [rng.randrange(6) for _ in range(rng.randrange(1, 6))]]))
        assert index.propose(tokens, 4) == propose(tokens, 4), len(tokens)


def test_a_shorter_sequence_starts_the_index_over():
    index = NgramIndex(1, 2)
    assert index.propose([1, 2, 3, 1], 2) == [2, 3]
    assert index.propose([4, 5, 4], 2) == [5, 4]


def test_sizes_are_checked():
    with pytest.raises(ValueError, match="ngram_min <= ngram_max"):
        NgramIndex(3, 2)
    with pytest.raises(ValueError):
        NgramIndex(0, 2)
