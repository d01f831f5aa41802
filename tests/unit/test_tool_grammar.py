"""A forced call's grammar (backends/tools/grammar.py) writes a format's markers as the model's
vocabulary holds them: a special token by id, otherwise text."""

import json

import pytest

from lmgate.backends.structured_output import problem
from lmgate.backends.tools.formats import ToolFormat, markers
from lmgate.backends.tools.grammar import forced_calls, optional_calls
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


@pytest.fixture(scope="module")
def tiny(tiny_chat_path):
    from lmgate.backends.llamacpp.config import LlamaCppConfig
    from lmgate.backends.llamacpp.grammar import matchers
    from lmgate.backends.llamacpp.llama_model import LlamaModel

    model = LlamaModel(LlamaCppConfig(gguf=tiny_chat_path, n_ctx=256, max_seqs=1))
    yield model, matchers(model)
    model.close()


AUTO = Tools(TOOLS.functions, ToolChoice.AUTO)


@pytest.mark.parametrize(
    ("fmt", "text", "next_text"),
    [
        (ToolFormat.HERMES, "Let me look. <tool_call>\n", '{"name":'),  # the marker starts a call
        (ToolFormat.HERMES, "No call: <tool_ and {json}.", None),  # text stays free
        (ToolFormat.MISTRAL, "[TOOL_CALLS]", "["),
        (ToolFormat.LLAMA3, " \n{", '"'),  # an object opening the answer is a call
        (ToolFormat.LLAMA3, "Hello {", None),  # an object later is prose
    ],
)
def test_auto_is_free_until_a_call_starts_then_held_to_the_call(tiny, fmt, text, next_text):
    from lmgate.backends.structured_output import allowed

    model, compiler = tiny
    matcher = compiler.matcher(optional_calls(AUTO, fmt))
    assert all(matcher.consume_token(t) for t in model.tokenize(text, add_special=False, parse_special=False))
    permitted = allowed(matcher, model.n_vocab)
    if next_text is None:
        assert permitted.sum() > model.n_vocab // 2
    else:
        assert {model.pieces[t].decode() for t in permitted.nonzero()[0]} == {next_text}
