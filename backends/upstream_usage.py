"""Per-choice usage for backends whose upstream reports usage once per request.

Another lmgate (gRPC) and OpenAI-compatible servers send the request's usage after every choice
has ended, while lmgate's contract puts each choice's usage on that choice's last delta. This
holds the last deltas until the request's usage arrives (or the stream ends) and hands each its
share: the prompt counts for every choice; a lone choice gets the upstream's completion count,
several choices get the tokens counted on their own deltas.
"""

from __future__ import annotations

from dataclasses import replace

from lmgate.backends.types import TokenDelta, Usage


class UsageSplitter:
    def __init__(self, n: int) -> None:
        self._n = n
        self._tokens: dict[int, int] = {}
        self._held: list[TokenDelta] = []

    def add(self, delta: TokenDelta, tokens: int) -> TokenDelta | None:
        """Count ``tokens`` for the delta's choice; the delta to pass on now, or None if held."""
        self._tokens[delta.index] = self._tokens.get(delta.index, 0) + tokens
        if delta.finish_reason is None:
            return delta
        self._held.append(delta)
        return None

    def release(self, prompt_tokens: int = 0, completion_tokens: int | None = None,
                cached_tokens: int = 0) -> list[TokenDelta]:  # fmt: skip
        """The held last deltas with their usage (zeros where the upstream sent none)."""
        held, self._held = self._held, []
        return [
            replace(d, usage=Usage(prompt_tokens, self._completion(d.index, completion_tokens), cached_tokens))
            for d in held
        ]

    def _completion(self, index: int, total: int | None) -> int:
        return total if total is not None and self._n == 1 else self._tokens.get(index, 0)
