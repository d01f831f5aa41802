"""A forced call's grammar (backends/tools/grammar.py) writes a format's markers as the model's
vocabulary holds them: a special token by id, otherwise text."""

import json

import pytest

from lmgate.backends.structured_output import problem
from lmgate.backends.tools.formats import ToolFormat, markers
from lmgate.backends.tools.grammar import forced_calls
from lmgate.backends.types import Tool, ToolChoice, Tools

TOOLS = Tools((Tool("add", "Add.", json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}})),),
              ToolChoice.REQUIRED)  # fmt: skip


def test_the_markers_of_each_format():
    assert markers(ToolFormat.HERMES) == ("<tool_call>", "</tool_call>")
    assert markers(ToolFormat.MISTRAL) == ("[TOOL_CALLS]", "]")
    assert markers(ToolFormat.LLAMA3) == ()


@pytest.mark.parametrize("fmt", list(ToolFormat))
def test_markers_that_are_special_tokens_are_named_by_id_and_the_grammar_compiles(fmt):
    tokens = {text: 1000 + i for i, text in enumerate(markers(fmt)) if text != "]"}
    spec = forced_calls(TOOLS, fmt, tokens).spec
    for text, token in tokens.items():
        assert f"<[{token}]>" in spec and json.dumps(text) not in spec
    plain = forced_calls(TOOLS, fmt).spec
    assert "<[" not in plain
    for text in tokens:
        assert text in plain
    assert problem(forced_calls(TOOLS, fmt, tokens)) is None and problem(forced_calls(TOOLS, fmt)) is None
