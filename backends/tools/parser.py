"""One choice's text → its content and OpenAI tool-call deltas, incrementally, as the tokens come.

A call streams as soon as it can: its first delta (``id``, ``name``) once the name is read and is a
declared function, then the arguments object's text as the model writes it, so the deltas'
``arguments`` concatenate to exactly the JSON the model wrote (never re-serialised, never cut: the
bug class of vllm#22885). Text that may still become a call (a ``<tool_call>`` half written, a
newline before it) is held back and released as content the moment it is not one.

Content that merely looks like a call never breaks the response: a start marker followed by
anything but a call object, a call naming no declared function, a bare ``[`` or ``{`` in prose
(llama.cpp#24071) stay content. A call already streamed stays a call even if the model stops
mid-object (``max_tokens``: the finish reason says ``length``, as OpenAI's does).
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass

from lmgate.backends.tools.formats import Syntax
from lmgate.backends.tools.scan import ObjectScanner
from lmgate.backends.types import ToolCallDelta

_ID_CHARS = string.ascii_letters + string.digits


def new_call_id() -> str:
    """An id in OpenAI's shape: ``call_`` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


def arguments_text(value: str | None) -> str:
    """OpenAI's ``arguments`` of a complete call: the object's JSON text as written; ``{}`` when the
    model wrote none (or null); unwrapped when it wrote the object as a JSON string."""
    if value is None or value == "null":
        return "{}"
    if value.startswith('"'):
        try:
            inner = json.loads(value)
        except ValueError:
            return value
        return inner if isinstance(inner, str) else value
    return value


@dataclass
class _Call:
    """A call of the current region that has begun streaming: it stays a call whatever follows."""

    index: int
    sent: int = 0
    """Characters of its arguments streamed."""
    done: bool = False


_INCOMPLETE, _INVALID, _CLOSED = "incomplete", "invalid", "closed"


class ToolCallParser:
    """Parses one choice. ``feed`` each text delta, then ``finish`` once; each returns the content to
    send and the tool-call deltas, in order. ``names`` are the declared functions (a call to any other
    is content); without ``parallel`` only the first call is kept. Each character is read once."""

    def __init__(
        self, syntax: Syntax, names: frozenset[str], *, parallel: bool = True,
        new_id: Callable[[], str] = new_call_id,
    ) -> None:  # fmt: skip
        self._syntax = syntax
        self._names = names
        self._parallel = parallel
        self._new_id = new_id
        self._text = ""
        self._pos = 0
        """Text before this index is decided: sent as content, part of a call, or dropped."""
        self._search = 0
        """Where the next start marker is looked for."""
        self._content_seen = False
        self.calls = 0
        """Calls begun so far (kept or dropped)."""
        self._region: int | None = None
        """Where the call region being read starts (at its marker)."""
        self._reset_region()

    def _reset_region(self) -> None:
        self._opened = False
        self._cursor = 0
        """Where the region goes on: after the marker, a complete call, or a separator."""
        self._objects = 0
        self._scanner: ObjectScanner | None = None
        self._call: _Call | None = None
        """The call the scanner is reading, once begun."""
        self._begun: list[_Call] = []
        self._region_end = 0
        """End of the region's last complete call."""
        self._skipping = False
        """A begun call turned out malformed: the rest of the region, to its close, is dropped."""

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        self._text += text
        return self._run(final=False)

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        return self._run(final=True)

    def _run(self, *, final: bool) -> tuple[str, list[ToolCallDelta]]:
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        while self._region is not None or self._find_region(content, final):
            status, end = self._scan_region(deltas, final)
            if status == _INCOMPLETE and not final:
                break
            self._leave_region(status, end)
        if final:
            self._release(content, len(self._text), final=True)
        return "".join(content), deltas

    # --- content ---

    def _find_region(self, content: list[str], final: bool) -> bool:
        """Releases content up to the next call region; True when one starts."""
        syntax, text = self._syntax, self._text
        if syntax.at_start_only:
            stripped = text[self._pos :].lstrip()
            if self._content_seen or self.calls or not stripped or not stripped.startswith("{"):
                self._release(content, len(text), final)
                return False
            self._region = len(text) - len(stripped)
            return True
        at = text.find(syntax.start, max(self._search, self._pos))
        if at < 0:
            keep = 0 if final else _marker_prefix(text[self._pos :], syntax.start)
            self._release(content, len(text) - keep, final)
            return False
        self._release(content, at, final=False)  # whitespace before it: dropped if it is a call
        self._region = at
        return True

    def _release(self, out: list[str], end: int, final: bool) -> None:
        """Sends text up to ``end`` as content, holding trailing whitespace back (it may sit before a
        call, where it is dropped); at the end of a choice with calls, trailing whitespace is dropped."""
        text = self._text[self._pos : end]
        body = text if final and not self.calls else text.rstrip()
        if body:
            out.append(body)
            self._content_seen = True
        self._pos = end if final else self._pos + len(body)

    # --- a region of calls ---

    def _scan_region(self, deltas: list[ToolCallDelta], final: bool) -> tuple[str, int]:
        """Reads the region on from where it stopped, streaming what is new; (status, where it ends)."""
        syntax, text = self._syntax, self._text
        assert self._region is not None
        if not self._opened:
            i = self._region + len(syntax.start)
            if syntax.open:
                i = _skip_space(text, i)
                if not text.startswith(syntax.open, i):
                    incomplete = syntax.open.startswith(text[i:]) and not final
                    return (_INCOMPLETE if incomplete else _INVALID), self._region
                i += len(syntax.open)
            self._opened, self._cursor = True, i
        while True:
            if self._skipping:
                at = text.find(syntax.close, self._cursor) if syntax.close else -1
                if at >= 0:
                    return _CLOSED, at + len(syntax.close)
                return (_CLOSED, len(text)) if final or not syntax.close else (_INCOMPLETE, self._region_end)
            if self._scanner is None:
                j = _skip_space(text, self._cursor)
                if j == len(text):
                    return _INCOMPLETE, self._region_end
                if self._objects:  # after a call: a separator, the close, or the region's end
                    if syntax.separator and text.startswith(syntax.separator, j):
                        self._cursor = j + len(syntax.separator)
                        self._objects = 0 if syntax.separator else self._objects
                        continue
                    if syntax.close and text.startswith(syntax.close, j):
                        return _CLOSED, j + len(syntax.close)
                    if syntax.close and syntax.close.startswith(text[j:]) and not final:
                        return _INCOMPLETE, self._region_end
                    return _CLOSED, self._region_end
                self._scanner = ObjectScanner(j, syntax.arguments_key, name_first=syntax.at_start_only)
            status = self._read_object(deltas)
            if status is not None:
                return status, self._region_end

    def _read_object(self, deltas: list[ToolCallDelta]) -> str | None:
        """Reads the current object on; a status when the region stops here (None: go on)."""
        scanner, text = self._scanner, self._text
        assert scanner is not None
        scanner.scan(text)
        if self._call is None and scanner.name is not None:
            if scanner.name not in self._names:
                return _INVALID  # a call of nothing declared: no call
            self._call = _Call(self.calls)
            self.calls += 1
            self._begun.append(self._call)
            if self._kept(self._call):
                deltas.append(ToolCallDelta(self._call.index, self._new_id(), scanner.name, ""))
        if self._call is not None and not self._call.done:
            self._stream(self._call, scanner, deltas)
        if scanner.invalid:
            if self._call is None:
                return _INVALID
            self._call.done = True  # a begun call stays a call: what follows, to the close, is dropped
            self._skipping, self._cursor, self._scanner, self._call = True, scanner.invalid_at, None, None
            return None
        if scanner.end is None:
            return _INCOMPLETE
        if self._call is None:  # a complete object without a name: no call
            return _INVALID
        self._region_end = self._cursor = scanner.end
        self._objects += 1
        self._scanner, self._call = None, None
        return None

    def _kept(self, call: _Call) -> bool:
        return self._parallel or call.index == 0

    def _stream(self, call: _Call, scanner: ObjectScanner, deltas: list[ToolCallDelta]) -> None:
        """Sends what is new of the call's arguments: an object as it is written; any other value (a JSON
        string holding the object, a scalar, none) once the call is complete."""
        complete = scanner.end is not None
        start, end = scanner.arguments_start, scanner.arguments_end
        written = start is not None and self._text[start] == "{"
        if written:
            assert start is not None
            piece = self._text[start + call.sent : end if end is not None else scanner.pos]
        elif complete:
            piece = arguments_text(self._text[start:end] if start is not None and end is not None else None)
        else:
            piece = ""
        call.done = complete
        if piece:
            call.sent += len(piece)
            if self._kept(call):
                deltas.append(ToolCallDelta(call.index, arguments=piece))

    def _leave_region(self, status: str, end: int) -> None:
        """Back to content after the region: from its end when closed, else after its last complete
        call; a region that began no call is content from its marker on; a choice that ended inside a
        call gave it all its text."""
        assert self._region is not None
        if status == _INCOMPLETE and self._call is not None:
            self._pos = len(self._text)
        elif status == _CLOSED or self._begun:
            self._pos = max(self._pos, end if status == _CLOSED else self._region_end)
        self._search = max(self._region + max(1, len(self._syntax.start)), self._pos)
        if self._syntax.at_start_only and not self._begun:
            self._content_seen = True
        self._region = None
        self._reset_region()


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _marker_prefix(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that is a beginning of ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
