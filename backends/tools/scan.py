"""Reading call objects (``{"name": ..., "arguments": {...}}``) out of partial text.

Pure functions over the text written so far: the parser calls them again as the text grows, so
they keep no state. A JSON value is read only as far as needed to find where it ends (strings,
escapes, nesting); its content is checked when the call is complete (backends/tools/parser.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

INVALID = -1
"""``ObjectScan.end`` when the text is no call object."""


@dataclass(frozen=True, slots=True)
class ObjectScan:
    """What a call object starting at some index holds so far."""

    end: int | None
    """Index after its closing brace; None while incomplete; ``INVALID`` if it is no object."""
    name: str | None = None
    """The ``name`` value, once its string is complete."""
    arguments: str | None = None
    """The arguments value's text: whole when complete, else what is written of an object or list."""
    arguments_complete: bool = False


def _string_end(text: str, i: int) -> int | None:
    """Index after the string literal opening at ``text[i] == '"'``; None if it is not closed yet."""
    j = i + 1
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == '"':
            return j + 1
        j += 1
    return None


def _value_end(text: str, i: int) -> tuple[int | None, bool]:
    """Where the JSON value starting at ``i`` ends: (index after it, or None if not yet; whether the
    text is still a plausible value). A scalar ends at the first ``,`` ``}`` ``]`` or space."""
    ch = text[i]
    if ch == '"':
        return _string_end(text, i), True
    if ch in "{[":
        depth, j = 0, i
        while j < len(text):
            c = text[j]
            if c == '"':
                end = _string_end(text, j)
                if end is None:
                    return None, True
                j = end
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return j + 1, True
            j += 1
        return None, True
    if ch in "-0123456789tfn":
        j = i
        while j < len(text) and text[j] not in ",}] \t\r\n":
            j += 1
        return (j, True) if j < len(text) else (None, True)
    return None, False


def _string(literal: str) -> str | None:
    try:
        value = json.loads(literal)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def scan_object(text: str, start: int, arguments_key: str) -> ObjectScan:
    """Reads the call object that starts (after whitespace) at ``start``."""
    i = _skip_space(text, start)
    if i == len(text):
        return ObjectScan(None)
    if text[i] != "{":
        return ObjectScan(INVALID)
    i += 1
    name: str | None = None
    arguments: str | None = None
    arguments_complete = False
    expect_key = True
    while True:
        i = _skip_space(text, i)
        if i == len(text):
            return ObjectScan(None, name, arguments, arguments_complete)
        ch = text[i]
        if ch == "}":
            return ObjectScan(i + 1, name, arguments, arguments_complete)
        if not expect_key:
            if ch != ",":
                return ObjectScan(INVALID)
            i, expect_key = i + 1, True
            continue
        if ch != '"':
            return ObjectScan(INVALID)
        key_end = _string_end(text, i)
        if key_end is None:
            return ObjectScan(None, name, arguments, arguments_complete)
        key = _string(text[i:key_end])
        if key is None:
            return ObjectScan(INVALID)
        i = _skip_space(text, key_end)
        if i == len(text):
            return ObjectScan(None, name, arguments, arguments_complete)
        if text[i] != ":":
            return ObjectScan(INVALID)
        i = _skip_space(text, i + 1)
        if i == len(text):
            return ObjectScan(None, name, arguments, arguments_complete)
        value_end, plausible = _value_end(text, i)
        if not plausible:
            return ObjectScan(INVALID)
        if key == arguments_key:
            arguments = text[i:value_end] if value_end is not None else (text[i:] if text[i] in "{[" else None)
            arguments_complete = value_end is not None
        if value_end is None:
            return ObjectScan(None, name, arguments, arguments_complete)
        if key == "name":
            value = _string(text[i:value_end]) if text[i] == '"' else None
            if value is None:
                return ObjectScan(INVALID)
            name = value
        i, expect_key = value_end, False
