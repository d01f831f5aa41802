"""Token bytes in, streamable text out: UTF-8 reassembly and stop strings with hold-back.

A token can end in the middle of a UTF-8 character, and a stop string can span tokens. This
buffer emits only text that is final: complete characters, and never a tail that could still
turn out to be the beginning of a stop string. When a stop string appears, the text is cut
before it and nothing after it is ever emitted. ``next_token`` holds the rules of when a choice
ends, shared by every engine.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

from lmgate.backends.types import FinishReason


class OutputText:
    """The text of one choice, fed a token's bytes at a time. Not thread-safe."""

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._text = ""
        self._emitted = 0
        self.stopped = False

    @property
    def text(self) -> str:
        """Everything decoded so far, cut before a stop string once one matched."""
        return self._text

    def append(self, piece: bytes) -> str:
        """Add one token's bytes; return the new text that is safe to emit (possibly "").

        Sets ``stopped`` when a stop string completes; the returned text then ends before it.
        """
        if self.stopped:
            return ""
        self._text += self._decoder.decode(piece)
        cut = self._find_stop()
        if cut is not None:
            self._text = self._text[:cut]
            self.stopped = True
            return self._take(cut)
        return self._take(len(self._text) - self._held_back())

    def finish(self) -> str:
        """The choice ended: release what was held back (an unfinished character becomes U+FFFD)."""
        if not self.stopped:
            self._text += self._decoder.decode(b"", final=True)
        return self._take(len(self._text))

    def _take(self, end: int) -> str:
        chunk = self._text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return chunk

    def _find_stop(self) -> int | None:
        hits = [i for s in self._stop if (i := self._text.find(s, self._emitted)) >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stop:
            for k in range(min(len(stop) - 1, len(self._text) - self._emitted), longest, -1):
                if self._text.endswith(stop[:k]):
                    longest = k
                    break
        return longest


def _nothing() -> bytes:
    return b""


def next_token(
    output: OutputText,
    piece: Callable[[], bytes] | None,
    at_length: Callable[[], bool],
    rest: Callable[[], bytes] = _nothing,
) -> tuple[str, FinishReason | None]:
    """One sampled token's effect on its choice: the text to stream and why the choice ended, if it did.

    ``piece`` gives the token's bytes, or is None for a token that stops the choice (a stop token id,
    an end-of-generation token), which ends it with STOP and adds no text. Otherwise the bytes are
    appended, and a stop string they complete ends it with STOP. Otherwise ``at_length()`` (the
    token, already counted, reached ``max_tokens`` or the context) ends it with LENGTH. On an end,
    ``rest`` (bytes a detokenizer still holds) and every held-back character are released.
    """
    finish: FinishReason | None
    if piece is None:
        text, finish = "", FinishReason.STOP
    else:
        text = output.append(piece())
        finish = FinishReason.STOP if output.stopped else None
    if finish is None and at_length():
        finish = FinishReason.LENGTH
    if finish is not None:
        if not output.stopped:
            text += output.append(rest())
        text += output.finish()
    return text, finish
