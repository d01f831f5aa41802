"""The formats in which models write function calls, one per family, and how to tell which a model
uses from its chat template.

- ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (NousResearch
  Hermes, Qwen 2.5 / 3, tiny-chat).
- ``llama3``: a bare JSON object ``{"name": ..., "parameters": {...}}`` as the whole answer, calls
  separated by ``;``, optionally after ``<|python_tag|>`` (Llama 3.1 / 3.2 / 3.3 JSON tool calling).
- ``mistral``: ``[TOOL_CALLS]`` then a JSON list of ``{"name": ..., "arguments": {...}}`` (Mistral
  v0.3 and later instruct models).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal


class ToolFormat(enum.StrEnum):
    HERMES = "hermes"
    LLAMA3 = "llama3"
    MISTRAL = "mistral"


@dataclass(frozen=True, slots=True)
class Syntax:
    """Where calls sit in a choice's text.

    After ``start`` (anywhere in the text; for ``at_start_only`` formats only before any other
    content), ``open`` then call objects separated by ``separator``, then ``close``; text after
    ``close`` is content again. ``start == ""`` means the calls begin with the object itself.
    """

    start: str
    open: str = ""
    separator: str = ""
    close: str = ""
    arguments_key: str = "arguments"
    at_start_only: bool = False
    """Calls only when the answer begins with them (a bare JSON object is content anywhere else)."""


SYNTAX: dict[ToolFormat, Syntax] = {
    ToolFormat.HERMES: Syntax(start="<tool_call>", close="</tool_call>"),
    ToolFormat.LLAMA3: Syntax(start="", separator=";", arguments_key="parameters", at_start_only=True),
    ToolFormat.MISTRAL: Syntax(start="[TOOL_CALLS]", open="[", separator=",", close="]"),
}


def markers(fmt: ToolFormat) -> tuple[str, ...]:
    """The texts that delimit ``fmt``'s calls (start and close). A vocabulary may hold one as a single
    special token (Mistral's ``[TOOL_CALLS]`` is a control token, Qwen's ``<tool_call>`` an added one):
    the engine then shows it as text to the parser, and a forced call's grammar names it by id."""
    syntax = SYNTAX[fmt]
    return tuple(m for m in (syntax.start, syntax.close) if m)


_MARKERS = (
    (ToolFormat.HERMES, "<tool_call>"),
    (ToolFormat.MISTRAL, "[TOOL_CALLS]"),
    (ToolFormat.LLAMA3, "<|python_tag|>"),
    (ToolFormat.LLAMA3, '"parameters": '),
)


def detect(template: str | None) -> ToolFormat | None:
    """The format a chat template teaches, from the markers it writes; None when it shows no tools."""
    if not template or "tools" not in template:
        return None
    for fmt, marker in _MARKERS:
        if marker in template:
            return fmt
    return None


ToolParser = Literal["auto", "hermes", "llama3", "mistral", "none"]
"""A model config's ``tool_parser``: ``auto`` tells the format from the chat template, ``none`` serves
no tools (a request with tools is refused)."""


def resolve(setting: ToolParser, template: str | None) -> ToolFormat | None:
    """The format a model's calls are read in, from its config's ``tool_parser`` and its template."""
    if setting == "none":
        return None
    return detect(template) if setting == "auto" else ToolFormat(setting)
