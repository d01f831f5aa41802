"""The grammars of function calls: ``forced_calls`` enforces a call (``tool_choice`` ``required`` or a
named function); ``optional_calls`` (``auto``) leaves the model free until it starts a call, and from
its marker on holds the call to the same rules, as llama.cpp's lazy grammars do.

The call is written in the model's own format (backends/tools/formats.py), and its object is
constrained by a JSON Schema: ``name`` one of the allowed functions and the arguments that function's
``parameters`` — so a forced call always parses and always validates. JSON is laid out as
``json.dumps`` writes it (backends/structured_output.py ``JSON_LAYOUT``), the layout the model saw
in its template's tool-call history. An arguments schema that lists ``properties`` without saying
``additionalProperties`` gets no others (as llama.cpp's schema grammars do): a call names the
parameters its function declares, instead of running on with invented keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lmgate.backends.structured_output import JSON_LAYOUT
from lmgate.backends.tools.formats import SYNTAX, ToolFormat
from lmgate.backends.types import StructuredOutput, StructureKind, ToolChoice, Tools


def _closed(schema: Any) -> Any:
    if isinstance(schema, dict) and "properties" in schema and "additionalProperties" not in schema:
        return {**schema, "additionalProperties": False}
    return schema


def _hoisted(name: str, parameters: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """A reference to ``parameters`` moved into the combined schema's ``$defs`` (with its own
    ``$defs`` / ``definitions`` beside it, prefixed by the function's name), its ``$ref``s rewritten
    to match: a function's schema keeps its meaning nested under a call object (pydantic's models
    refer to ``#/$defs/...``)."""
    prefix = f"{name}__"
    root = f"#/$defs/{prefix}"

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: rewrite(v) for k, v in node.items() if k not in ("$defs", "definitions")}
            ref = node.get("$ref")
            if isinstance(ref, str) and (ref == "#" or ref.startswith(("#/$defs/", "#/definitions/"))):
                out["$ref"] = root + ("" if ref == "#" else ref.split("/", 2)[2])
            return out
        return [rewrite(v) for v in node] if isinstance(node, list) else node

    if isinstance(parameters, dict):
        for key in ("$defs", "definitions"):
            for sub, schema in (parameters.get(key) or {}).items():
                defs[prefix + sub] = rewrite(schema)
    defs[prefix] = _closed(rewrite(parameters))
    return {"$ref": root}


def _call_schema(tools: Tools, arguments_key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The schema of one call object, and the ``$defs`` it refers to (for the root of its JSON)."""
    chosen = [t for t in tools.functions if tools.choice is not ToolChoice.FUNCTION or t.name == tools.function]
    defs: dict[str, Any] = {}
    objects = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, arguments_key: _hoisted(t.name, json.loads(t.parameters), defs)},
            "required": ["name", arguments_key],
            "additionalProperties": False,
        }
        for t in chosen
    ]
    return (objects[0] if len(objects) == 1 else {"anyOf": objects}), defs


def _json(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": dict(JSON_LAYOUT)})


def _marker(text: str, tokens: Mapping[str, int], *, before: str = "", after: str = "") -> str:
    """``before + text + after`` as grammar: ``text`` as its token id (``<[id]>``) when ``tokens`` has it
    (a special token of the vocabulary, which a string literal would make the model spell out)."""
    if text not in tokens:
        return json.dumps(before + text + after)
    parts = [json.dumps(before)] if before else []
    parts.append(f"<[{tokens[text]}]>")
    if after:
        parts.append(json.dumps(after))
    return " ".join(parts)


def forced_calls(tools: Tools, fmt: ToolFormat, tokens: Mapping[str, int] | None = None) -> StructuredOutput:
    """The constraint for a request whose ``tools`` force a call (``tools.forced``): one call, or with
    ``required`` and ``parallel`` one or more. ``tokens``: the format's markers that are single
    special tokens of the model's vocabulary (``ModelInfo.tool_tokens``), by text."""
    syntax = SYNTAX[fmt]
    tokens = tokens or {}
    call, defs = _call_schema(tools, syntax.arguments_key)
    many = tools.parallel and tools.choice is ToolChoice.REQUIRED
    if fmt is ToolFormat.MISTRAL:
        calls = {"type": "array", "items": call, "minItems": 1, **({} if many else {"maxItems": 1}), "$defs": defs}
        lark = f"start: {_marker(syntax.start, tokens)} {_json(calls)}\n"
    elif fmt is ToolFormat.LLAMA3:
        more = ' ("; " call)*' if many else ""
        lark = f"start: call{more}\ncall: {_json({**call, '$defs': defs})}\n"
    else:
        lark = (  # calls back to back, as the template writes them (a newline between would invite a run on)
            f"start: call{'+' if many else ''}\n"
            f"call: {_marker(syntax.start, tokens, after=chr(10))} {_json({**call, '$defs': defs})} "
            f"{_marker(syntax.close, tokens, before=chr(10))}\n"
        )
    return StructuredOutput(StructureKind.GRAMMAR, lark)


_TEXT = "TEXT: /(?s:.*)/\n"


def optional_calls(tools: Tools, fmt: ToolFormat, tokens: Mapping[str, int] | None = None) -> StructuredOutput:
    """The constraint for ``tool_choice`` ``auto``: any text, and where the model writes a call's start
    marker (for ``llama3``: a ``{`` opening the answer), a call that parses and validates, as in
    ``forced_calls``; with ``parallel``, any number of calls, else at most one."""
    syntax = SYNTAX[fmt]
    tokens = tokens or {}
    call, defs = _call_schema(tools, syntax.arguments_key)
    calls = "call*" if tools.parallel else "call?"
    if fmt is ToolFormat.LLAMA3:  # a bare object opening the answer (after blanks, as the parser reads it)
        more = ' ("; " call)*' if tools.parallel else ""
        return StructuredOutput(
            StructureKind.GRAMMAR,
            f"start: LEAD call{more} | PROSE\nLEAD: /\\s*/\nPROSE: /(?s:\\s*([^{{\\s].*)?)/\n"
            f"call: {_json({**call, '$defs': defs})}\n",
        )
    if fmt is ToolFormat.MISTRAL:
        array = {"type": "array", "items": call, "minItems": 1, **({} if tools.parallel else {"maxItems": 1})}
        body = _json({**array, "$defs": defs})
        calls = "call?"  # one [TOOL_CALLS] list holds all of a turn's calls
    else:
        body = f"{_json({**call, '$defs': defs})} {_marker(syntax.close, tokens, before=chr(10))}"
    newline = ' "\\n"' if fmt is ToolFormat.HERMES else ""  # the Hermes template's layout: marker, newline, object
    if syntax.start in tokens:  # a special token: text cannot run into it, so TEXT simply ends there
        head = f"call: TEXT <[{tokens[syntax.start]}]>{newline} {body}\n"
    else:  # the shortest text that ends with the marker: free text up to the first one
        head = f"call: head{newline} {body}\nhead[lazy]: TEXT {json.dumps(syntax.start)}\n"
    return StructuredOutput(StructureKind.GRAMMAR, f"start: {calls} TEXT\n{head}{_TEXT}")
