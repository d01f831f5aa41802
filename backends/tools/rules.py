"""What a tool definition and a tool choice may be, checked at both edges (HTTP and gRPC) with the
same texts, before anything is rendered or compiled.

OpenAI's rules where it has them (names of ``[a-zA-Z0-9_-]{1,64}``, at most 128 tools); each
function's ``parameters`` is a JSON Schema held to the structured-output checks (size, depth,
llguidance's validation: backends/structured_output.py), since a forced call compiles it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re

from lmgate.backends import structured_output
from lmgate.backends.tools.formats import ToolFormat
from lmgate.backends.tools.grammar import forced_calls, optional_calls
from lmgate.backends.types import StructuredOutput, StructureKind, ToolChoice, Tools

MAX_TOOLS = 128
MAX_DESCRIPTION_CHARS = 8192
MAX_ID_CHARS = 256
"""A call id, a tool message's tool_call_id, an author name."""
NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
EMPTY_PARAMETERS = '{"type": "object", "properties": {}}'
"""The parameters of a function declared without any."""
TOOLS_AND_FORMAT = (
    "tools and a structured output (response_format, structured_outputs) cannot be combined: a call is itself "
    "constrained by its function's parameters; send tool_choice none to use both"
)


def name_problem(name: str) -> str | None:
    if NAME.fullmatch(name) is None:
        return f"a function name is 1 to 64 letters, digits, underscores or dashes, got {name[:80]!r}"
    return None


@functools.lru_cache(maxsize=1024)
def parameters_problem(parameters: str) -> str | None:
    """``parameters`` is JSON Schema text of an object (answers are cached: agents send the same tools
    with every turn, and checking compiles the schema)."""
    if rule := structured_output.problem(StructuredOutput(StructureKind.JSON_SCHEMA, parameters)):
        return rule
    schema = json.loads(parameters)
    if isinstance(schema, dict) and schema.get("type", "object") != "object":
        return "a function's parameters are an object schema (type: object)"
    return None


def tool_list_problem(names: list[str]) -> str | None:
    """What is wrong with the list of tools as a whole (each definition is checked on its own)."""
    if len(names) > MAX_TOOLS:
        return f"at most {MAX_TOOLS} tools, got {len(names)}"
    if len(set(names)) != len(names):
        return "function names must be unique"
    return None


def tool_choice_problem(choice: ToolChoice, function: str | None, names: list[str]) -> str | None:
    if choice is ToolChoice.FUNCTION and function not in names:
        return f"tool_choice names the function {function!r}, which is not among the tools"
    if choice in (ToolChoice.REQUIRED, ToolChoice.FUNCTION) and not names:
        return f"tool_choice {choice.value!r} needs tools"
    return None


_CHECKED_CALLS: dict[bytes, str | None] = {}
"""``calls_problem``'s answers by a digest of the tools: the newest ``_CHECKED_CALLS_KEPT`` (a tool
list may be megabytes, a digest is 16 bytes)."""
_CHECKED_CALLS_KEPT = 1024


def calls_problem(tools: Tools) -> str | None:
    """A call grammar (every allowed function's parameters under one call schema, forced or optional) that
    does not compile; checked at the edge so the error names ``tools``, not a format the client never sent.
    Remembered: an agent sends the same tools every turn, and checking them compiles their schemas (ms)."""
    if tools.choice is ToolChoice.NONE:
        return None
    key = hashlib.blake2b(repr(tools).encode(), digest_size=16).digest()
    if key in _CHECKED_CALLS:
        return _CHECKED_CALLS[key]
    calls = forced_calls if tools.forced else optional_calls
    problem = structured_output.problem(calls(tools, ToolFormat.HERMES))
    if len(_CHECKED_CALLS) >= _CHECKED_CALLS_KEPT:
        _CHECKED_CALLS.pop(next(iter(_CHECKED_CALLS)), None)  # the oldest
    _CHECKED_CALLS[key] = problem
    return problem


def tools_problem(tools: Tools) -> tuple[str, str] | None:
    """(the field, what is wrong) for a request's tools, or None."""
    names = [t.name for t in tools.functions]
    if rule := tool_list_problem(names):  # the count first: checking a definition compiles its schema
        return "tools", rule
    for i, tool in enumerate(tools.functions):
        if len(tool.description) > MAX_DESCRIPTION_CHARS:
            return f"tools.{i}.description", f"at most {MAX_DESCRIPTION_CHARS} characters"
        if rule := name_problem(tool.name) or parameters_problem(tool.parameters):
            return f"tools.{i}", rule
    if rule := tool_choice_problem(tools.choice, tools.function, names):
        return "tool_choice", rule
    if rule := calls_problem(tools):
        return "tools", rule
    return None
