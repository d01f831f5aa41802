"""Structured outputs: what a constraint may be, and its grammar for llguidance.

NOTE: llguidance (the Rust library llama.cpp and vLLM use for structured outputs) over xgrammar
and llama.cpp's own GBNF sampler: it reads JSON Schema, regular expressions, choices and Lark or
GBNF grammars alike, computes a step's token mask in tens of microseconds for any vocabulary
without a precompiled per-tokenizer table, and builds from llama.cpp's vocabulary directly
(``llguidance.llamacpp``), so the CPU engine masks its own logits per sequence inside the batched
step. llama.cpp's GBNF sampler would need one sampler per sequence and is the component behind the
nested-grammar crashes the issue names (llama.cpp#26600, #25283).

``check`` runs at the edge, before anything is compiled for a model (STYLE 14: nothing reaches
native code unvalidated): size and nesting caps first, then llguidance's own validation of the
grammar, so a malformed or hostile schema is a 400 naming its field, never an engine error.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import llguidance
import numpy as np
import numpy.typing as npt

from lmgate.backends.errors import InvalidRequest, field_problem
from lmgate.backends.types import StructuredOutput, StructureKind

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # a TypedDict the package does not re-export

log = logging.getLogger(__name__)

MAX_SPEC_BYTES = 64 * 1024
"""A schema, regex, grammar or choice list larger than this is refused before any parsing."""
MAX_DEPTH = 32
"""Nesting of a JSON Schema (objects and lists inside each other)."""
MAX_CHOICES = 256

_ANY_OBJECT = '{"type": "object"}'
_FORMATS: dict[StructureKind, llguidance.GrammarFormat] = {
    StructureKind.REGEX: "regex", StructureKind.CHOICE: "choice", StructureKind.GRAMMAR: "grammar",
}  # fmt: skip


JSON_LAYOUT: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ", ",
                                             "key_separator": ": "}  # fmt: skip
"""JSON is written on one line, as ``json.dumps`` writes it. With free whitespace a small model may
spend every token it has on newlines between two braces."""


def grammar(structured: StructuredOutput) -> str:
    """The llguidance grammar of ``structured`` (checked: call ``check`` first)."""
    if structured.kind in (StructureKind.JSON, StructureKind.JSON_SCHEMA):
        spec = _ANY_OBJECT if structured.kind is StructureKind.JSON else structured.spec
        spec = "{}" if spec.strip() == "true" else spec  # the schema true: any JSON
        return llguidance.LLMatcher.grammar_from_json_schema(spec, overrides=JSON_LAYOUT)
    return llguidance.grammar_from(_FORMATS[structured.kind], structured.spec)


def problem(structured: StructuredOutput) -> str | None:
    """What is wrong with ``structured`` (too big, too deep, not a grammar llguidance accepts, in
    its words); None when it can be compiled."""
    size = len(structured.spec.encode())
    if size > MAX_SPEC_BYTES:
        return f"at most {MAX_SPEC_BYTES} bytes, got {size}"
    if structured.kind is StructureKind.JSON_SCHEMA and (rule := _schema_problem(structured.spec)):
        return rule
    if structured.kind is StructureKind.CHOICE and (rule := _choices_problem(structured.spec)):
        return rule
    try:
        text = grammar(structured)
    except ValueError as exc:
        return str(exc)
    return llguidance.LLMatcher.validate_grammar(text)[:500] or None


def check(structured: StructuredOutput, param: str) -> None:
    """Raises ``InvalidRequest`` naming ``param`` when ``problem`` finds one."""
    if rule := problem(structured):
        raise InvalidRequest(field_problem(param, rule, None, quoted=False), param=param)


def _schema_problem(spec: str) -> str | None:
    try:
        schema = json.loads(spec)
    except json.JSONDecodeError as exc:
        return f"the schema is not valid JSON: {exc}"
    except RecursionError:
        return f"the schema nests more than {MAX_DEPTH} levels deep"
    if schema is False:
        return "the schema false matches nothing"
    if not isinstance(schema, dict | bool):
        return "a JSON Schema is an object (or true / false)"
    depth = _depth(schema)
    return f"the schema nests {depth} levels deep, at most {MAX_DEPTH}" if depth > MAX_DEPTH else None


def _choices_problem(spec: str) -> str | None:
    try:
        choices = json.loads(spec)
    except (json.JSONDecodeError, RecursionError):
        return "the choices are a JSON list of strings"
    if not (isinstance(choices, list) and 1 <= len(choices) <= MAX_CHOICES):
        return f"give 1 to {MAX_CHOICES} choices"
    if not all(isinstance(c, str) and c for c in choices):
        return "every choice is a non-empty string"
    return None


def _depth(value: Any) -> int:
    """How deep objects and lists nest in ``value``, without recursion (a hostile schema may nest
    deeper than Python's stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            return level
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


CACHED_GRAMMARS = 32


class Matchers:
    """The compiled constraints of one model's vocabulary, for the engines that decode them.

    ``matcher`` compiles (or finds in a small LRU cache) and returns a fresh copy per sequence; call
    it where requests are submitted, never in an engine's step (a large grammar takes 100 ms or more
    to compile). ``vocabulary`` builds llguidance's view of the tokenizer, once, on first use.
    One thread at a time.
    """

    def __init__(self, vocabulary: Callable[[], llguidance.LLTokenizer]) -> None:
        self._vocabulary = vocabulary
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._compiled: OrderedDict[StructuredOutput, llguidance.LLMatcher] = OrderedDict()

    def matcher(self, structured: StructuredOutput) -> llguidance.LLMatcher:
        """A fresh matcher for one sequence; ``InvalidRequest`` if the constraint does not compile for
        this vocabulary (the edge checked it for any vocabulary already)."""
        compiled = self._compiled.get(structured)
        if compiled is None:
            if self._tokenizer is None:
                self._tokenizer = self._vocabulary()
            compiled = llguidance.LLMatcher(self._tokenizer, grammar(structured), log_level=0)
            if compiled.is_error():
                raise InvalidRequest(f"structured output: {compiled.get_error()[:500]}", param="response_format")
            self._compiled[structured] = compiled
            if len(self._compiled) > CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(structured)
        return compiled.deep_copy()


def allowed(matcher: llguidance.LLMatcher, n_vocab: int) -> npt.NDArray[np.bool_]:
    """Which of the ``n_vocab`` tokens ``matcher`` allows next."""
    words = np.empty((n_vocab + 31) // 32, dtype=np.int32)
    matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
    return np.unpackbits(words.view(np.uint8), bitorder="little")[:n_vocab].astype(bool)


def consume(matcher: llguidance.LLMatcher, token: int) -> bool:
    """Feed the sampled ``token``; False if the matcher refused it. The mask allowed it, so it never
    should: if a bug ever made it, the caller drops the matcher and the choice goes on unconstrained
    rather than taking the engine down."""
    if matcher.consume_token(token):
        return True
    log.error("structured output: the matcher refused token %d: %s", token, matcher.get_error())
    return False
