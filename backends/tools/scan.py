"""Reading a call object (``{"name": ..., "arguments": {...}}``) out of text that grows.

``ObjectScanner`` reads on from where it stopped each time the text grows, so a call of any length
costs one pass over its characters (the parser runs on the gateway's event loop). A JSON value is read
only as far as needed to know where it ends — strings, escapes, nesting with each bracket matched to
its own kind; ``name`` must be a string. The first ``name`` and the first arguments key win; a repeated
one is read and ignored.
"""

from __future__ import annotations

import json

_CLOSING = {"{": "}", "[": "]"}


class ObjectScanner:
    """One call object starting (after whitespace) at ``start`` of the parser's text.

    After ``scan(text)``: ``name`` once its string is complete; ``arguments_start`` /
    ``arguments_end`` where the arguments value sits (end None while it is being written); ``end``
    the index after the closing brace once complete; ``invalid`` when the text is no call object
    (from ``invalid_at`` on).
    """

    def __init__(self, start: int, arguments_key: str, *, name_first: bool = False) -> None:
        self.pos = start
        self.arguments_key = arguments_key
        self.name_first = name_first
        """A first key other than ``name`` makes it no call (the formats whose calls are bare JSON)."""
        self.state = "start"
        self.name: str | None = None
        self.arguments_start: int | None = None
        self.arguments_end: int | None = None
        self.end: int | None = None
        self.invalid = False
        self.invalid_at = 0
        self._key = ""
        self._key_start = 0
        self._value_start = 0
        self._stack: list[str] = []
        self._in_string = False
        self._escaped = False

    @property
    def done(self) -> bool:
        return self.end is not None or self.invalid

    def scan(self, text: str) -> None:
        while self.pos < len(text) and not self.done:
            self._step(text, text[self.pos])
            if not self.invalid:
                self.pos += 1

    def _fail(self) -> None:
        self.invalid, self.invalid_at = True, self.pos

    def _step(self, text: str, ch: str) -> None:
        state = self.state
        if state == "value":
            self._value_char(text, ch)
        elif ch.isspace() and state != "key_text":
            return
        elif state == "start":
            if ch == "{":
                self.state = "key_or_end"
            else:
                self._fail()
        elif state in ("key_or_end", "key"):
            if ch == '"':
                self.state, self._key_start, self._escaped = "key_text", self.pos, False
            elif ch == "}" and state == "key_or_end":
                self.end = self.pos + 1
            else:
                self._fail()
        elif state == "key_text":
            if self._string_char(ch):
                key = _string(text[self._key_start : self.pos + 1])
                if key is None or (self.name_first and self.name is None and key != "name"):
                    self._fail()
                else:
                    self._key, self.state = key, "colon"
        elif state == "colon":
            if ch == ":":
                self.state = "value_start"
            else:
                self._fail()
        elif state == "value_start":
            self.state, self._value_start, self._stack, self._in_string = "value", self.pos, [], False
            if self._key == self.arguments_key and self.arguments_start is None:
                self.arguments_start = self.pos
            self._value_char(text, ch)
        elif state == "after_value":
            if ch == ",":
                self.state = "key"
            elif ch == "}":
                self.end = self.pos + 1
            else:
                self._fail()

    def _string_char(self, ch: str) -> bool:
        """True at the closing quote of a string being read."""
        if self._escaped:
            self._escaped = False
        elif ch == "\\":
            self._escaped = True
        elif ch == '"':
            return True
        return False

    def _value_char(self, text: str, ch: str) -> None:
        first = self.pos == self._value_start
        if self._in_string:
            if self._string_char(ch):
                self._in_string = False
                if not self._stack:
                    self._value_done(text, self.pos + 1)
        elif ch == '"':
            self._in_string, self._escaped = True, False
        elif ch in "{[":
            if not first and not self._stack:
                self._fail()  # a scalar running into a bracket
            else:
                self._stack.append(_CLOSING[ch])
        elif ch in "}]":
            if self._stack:
                if self._stack.pop() != ch:
                    self._fail()
                elif not self._stack:
                    self._value_done(text, self.pos + 1)
            elif first:
                self._fail()
            else:  # a scalar ended by the object's close
                self._value_done(text, self.pos)
                self.state = "after_value"
                self._step(text, ch)
        elif not self._stack and (ch == "," or ch.isspace()):
            if first:
                self._fail()
            else:
                self._value_done(text, self.pos)
                self._step(text, ch)

    def _value_done(self, text: str, end: int) -> None:
        self.state = "after_value"
        if self._key == "name" and self.name is None:
            name = _string(text[self._value_start : end])
            if name is None:
                self._fail()
            self.name = name
        elif self._key == self.arguments_key and self.arguments_start == self._value_start:
            self.arguments_end = end


def _string(literal: str) -> str | None:
    """The string a JSON string literal holds; None when it is no string."""
    if not literal.startswith('"'):
        return None
    try:
        value = json.loads(literal)
    except ValueError:
        return None
    return value if isinstance(value, str) else None
