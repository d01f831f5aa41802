"""Streaming text from token ids with an HF tokenizer, a token at a time.

A token's text depends on its neighbours (SentencePiece's leading space, byte-level BPE pieces of
one character), so each step decodes a short window before and after the new tokens and emits the
difference, holding back while the tail is an unfinished character (U+FFFD). This is the window
scheme vLLM and TGI use. Special tokens are skipped, as in their output text.
"""

from __future__ import annotations

from typing import Any

_CONTEXT = 5
"""Tokens of context decoded before the new ones: enough for any merge of surrounding pieces."""


class Detokenizer:
    """The incremental decoder of one sequence (prompt + output ids). Not thread-safe."""

    def __init__(self, tokenizer: Any, prompt: list[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt[-_CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)

    def add(self, token_id: int) -> str:
        """The text ``token_id`` adds, possibly "" while a character is incomplete."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            if self._prefix > 4 * _CONTEXT:  # keep the window short
                self._ids = self._ids[self._prefix - _CONTEXT :]
                self._read -= self._prefix - _CONTEXT
                self._prefix = _CONTEXT
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """What is still held back (an unfinished character becomes U+FFFD)."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._read = len(self._ids)
        return after[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        text: str = self._tokenizer.decode(ids, skip_special_tokens=True)  # transformers is untyped
        return text
