"""Prompt lookup: draft tokens copied from where the sequence's last n tokens occurred before.

Input-grounded outputs (edits, extraction, summaries, code) repeat spans of their prompt, and
looping outputs repeat themselves: the tokens that followed the latest earlier occurrence of the
last ``n`` tokens are a good guess of what comes next. ``n`` runs from ``ngram_max`` down to
``ngram_min`` (the longest match wins). The index is kept up to date incrementally: each step adds
the n-grams of the tokens appended since the last call, never rescanning the context.
"""

from __future__ import annotations

from collections.abc import Sequence


class NgramIndex:
    """One sequence's n-grams → the position right after their latest occurrence. Not thread-safe."""

    def __init__(self, ngram_min: int, ngram_max: int) -> None:
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {ngram_min}..{ngram_max}")
        self._sizes = range(ngram_max, ngram_min - 1, -1)
        self._follower: dict[tuple[int, ...], int] = {}
        """n-gram (of any size) → the position of the token that followed it last."""
        self._indexed = 1
        """Follower positions below this are in the index."""

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        """Up to ``k`` tokens to follow ``tokens`` (which extend those of earlier calls); [] on no match.

        Past the end of ``tokens`` the match continues into its own proposal, so a repeating cycle
        is proposed in full.
        """
        end = len(tokens)
        if end < self._indexed:  # not an extension (never the case for the engine's sequences): start over
            self._follower.clear()
            self._indexed = 1
        self._add(tokens, end)
        if k <= 0:
            return []
        for n in self._sizes:
            if n > end:
                continue
            start = self._follower.get(tuple(tokens[end - n : end]))
            if start is not None:
                out: list[int] = []
                for j in range(start, start + k):
                    out.append(tokens[j] if j < end else out[j - end])
                return out
        return []

    def _add(self, tokens: Sequence[int], end: int) -> None:
        """Index the n-grams followed by the tokens at positions ``_indexed..end-1``: the suffix of
        ``tokens`` has no follower yet, so it never matches itself."""
        follower = self._follower
        for pos in range(self._indexed, end):
            for n in self._sizes:
                if n <= pos:
                    follower[tuple(tokens[pos - n : pos])] = pos
        self._indexed = max(self._indexed, end)
