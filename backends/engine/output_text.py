"""Token bytes in, streamable text out: UTF-8 reassembly and stop strings with hold-back.

A token can end in the middle of a UTF-8 character, and a stop string can span tokens. This
buffer emits only text that is final: complete characters, and never a tail that could still
turn out to be the beginning of a stop string. When a stop string appears, the text is cut
before it and nothing after it is ever emitted.
"""

from __future__ import annotations

import codecs


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
