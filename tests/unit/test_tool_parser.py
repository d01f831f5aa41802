"""The tool-call parser: content and OpenAI tool-call deltas from a choice's text, fed in any pieces."""

import itertools
import json

import pytest

from lmgate.backends.tools.formats import SYNTAX, ToolFormat, detect
from lmgate.backends.tools.parser import ToolCallParser

NAMES = frozenset({"get_weather", "add"})


def parse(fmt, text, pieces=1, parallel=True, names=NAMES):
    """Feeds ``text`` in ``pieces``-character deltas; returns (content, calls as (id, name, arguments))."""
    ids = (f"call_{i}" for i in itertools.count())
    parser = ToolCallParser(SYNTAX[fmt], names, parallel=parallel, new_id=lambda: next(ids))
    content, deltas = [], []
    for start in range(0, len(text), pieces):
        c, d = parser.feed(text[start : start + pieces])
        content.append(c)
        deltas += d
    c, d = parser.finish()
    content.append(c)
    deltas += d
    calls = {}
    for delta in deltas:
        if delta.name is not None:
            assert delta.index not in calls and delta.id is not None
            calls[delta.index] = [delta.id, delta.name, ""]
        calls[delta.index][2] += delta.arguments
    return "".join(content), [tuple(calls[i]) for i in sorted(calls)]


HERMES_TWO = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": [2, "}\\""]}}\n</tool_call>'
)


@pytest.mark.parametrize("pieces", [1, 2, 3, 7, 1000])
def test_hermes_calls_come_out_whole_however_the_text_is_cut(pieces):
    content, calls = parse(ToolFormat.HERMES, HERMES_TWO, pieces)
    assert content == ""
    assert calls == [
        ("call_0", "get_weather", '{"city": "Paris"}'),
        ("call_1", "add", '{"a": 1, "b": [2, "}\\""]}'),
    ]
    assert json.loads(calls[1][2]) == {"a": 1, "b": [2, '}"']}


def test_arguments_stream_as_they_are_written():
    parser = ToolCallParser(SYNTAX[ToolFormat.HERMES], NAMES, new_id=lambda: "call_x")
    assert parser.feed('<tool_call>\n{"name": "get_') == ("", [])
    content, deltas = parser.feed('weather", "arguments": {"ci')
    assert content == "" and [(d.id, d.name, d.arguments) for d in deltas] == [
        ("call_x", "get_weather", ""), (None, None, '{"ci'),
    ]  # fmt: skip
    assert [d.arguments for d in parser.feed('ty": "Rome"}}\n</tool_call>')[1]] == ['ty": "Rome"}']


def test_content_before_a_call_is_content_and_the_newline_before_it_is_dropped():
    content, calls = parse(
        ToolFormat.HERMES, 'Let me check.\n<tool_call>\n{"name": "add", "arguments": {}}\n</tool_call>\n'
    )
    assert content == "Let me check." and calls == [("call_0", "add", "{}")]


@pytest.mark.parametrize(
    "text",
    [
        "Use <tool_call> tags to call tools.",
        "<tool_call> is how I call",
        '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',
        '<tool_call>{"arguments": {}}</tool_call> done',
        "A bare [ or { in prose, and <tool_",
        '[1, 2] and {"a": 1}',
        "",
        "  spaces stay  ",
    ],
)
@pytest.mark.parametrize("pieces", [1, 4, 1000])
def test_what_only_looks_like_a_call_stays_content(text, pieces):
    assert parse(ToolFormat.HERMES, text, pieces) == (text, [])


def test_without_parallel_calls_only_the_first_is_kept():
    assert parse(ToolFormat.HERMES, HERMES_TWO, parallel=False)[1] == [("call_0", "get_weather", '{"city": "Paris"}')]


def test_a_call_cut_by_max_tokens_stays_a_call_and_its_text_is_not_content():
    content, calls = parse(ToolFormat.HERMES, '<tool_call>\n{"name": "add", "arguments": {"a": 1')
    assert content == "" and calls == [("call_0", "add", '{"a": 1')]


def test_arguments_written_as_a_json_string_are_unwrapped():
    text = '<tool_call>{"name": "add", "arguments": "{\\"a\\": 2}"}</tool_call>'
    assert parse(ToolFormat.HERMES, text, 3)[1] == [("call_0", "add", '{"a": 2}')]


def test_mistral_list():
    text = (
        '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}}, {"name": "get_weather", "arguments": {"city": "Oslo"}}]'
    )
    for pieces in (1, 5, 1000):
        content, calls = parse(ToolFormat.MISTRAL, text, pieces)
        assert content == "" and [c[1:] for c in calls] == [("add", '{"a": 1}'), ("get_weather", '{"city": "Oslo"}')]


def test_llama3_bare_json_only_at_the_start():
    text = '{"name": "get_weather", "parameters": {"city": "Lima"}}; {"name": "add", "parameters": {"a": 3}}'
    assert [c[1:] for c in parse(ToolFormat.LLAMA3, text, 2)[1]] == [
        ("get_weather", '{"city": "Lima"}'), ("add", '{"a": 3}'),
    ]  # fmt: skip
    prose = 'The JSON is {"name": "add", "parameters": {}}'
    assert parse(ToolFormat.LLAMA3, prose, 2) == (prose, [])
    assert parse(ToolFormat.LLAMA3, '{"answer": 42}', 3) == ('{"answer": 42}', [])


def test_formats_are_told_from_the_template():
    assert detect("{% if tools %}<tool_call>{% endif %}") is ToolFormat.HERMES
    assert detect("{% if tools %}[TOOL_CALLS]{% endif %}") is ToolFormat.MISTRAL
    assert detect('{% if tools %}{"name": function name, "parameters": dictionary}{% endif %}') is ToolFormat.LLAMA3
    assert detect("{{ messages }}") is None and detect(None) is None


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        (ToolFormat.HERMES, '<tool_call>{"name": "add", "arguments": {"a": 1]]]}}</tool_call>after'),
        (ToolFormat.HERMES, '<tool_call>{"name": "add", "arguments": {"a": 1} "b": 2}</tool_call> tail'),
        (ToolFormat.HERMES, '<tool_call>{"name": "add", "arguments": {"a": 1}, "name": "zz"}</tool_call>'),
        (ToolFormat.HERMES, '<tool_call>{"name": "add", "arguments": {"a": 1}, "arguments": {"b": 2}}</tool_call>'),
        (ToolFormat.HERMES, '<tool_call>{"name": "add", "arguments": {"a": 1]]}</tool_call>\n'
                            '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'),
        (ToolFormat.HERMES, 'Hi <tool_call>{"name": "add", "arguments": "{\\"a\\": [1, {\\"b\\": \\"}\\"}]}"}'),
        (ToolFormat.HERMES, '<tool_call>{"name": "add", "arguments": null}</tool_call><tool_call>{"name": "add"}'),
        (ToolFormat.MISTRAL, '[TOOL_CALLS][{"name": "add", "arguments": {"a": [1, 2]}}, {"name": "nope"}]'),
        (ToolFormat.LLAMA3, '{"name": "add", "parameters": {"x": {"y": [1, "]"]}}}; '
                            '{"name": "get_weather", "parameters": {}}'),
        (ToolFormat.LLAMA3, '{"answer": {"deep": [1, 2, 3]}, "name": "add"} and more'),
    ],
)  # fmt: skip
@pytest.mark.parametrize("parallel", [True, False])
def test_any_cut_of_the_text_gives_the_same_content_and_calls(fmt, text, parallel):
    """The streamed result never depends on where the deltas were cut: a call once begun stays a call,
    a malformed rest is dropped to the region's close, never re-sent as content."""
    whole = parse(fmt, text, len(text) + 1, parallel)
    for pieces in (1, 2, 3, 5, 8):
        assert parse(fmt, text, pieces, parallel) == whole


def test_a_malformed_call_keeps_what_was_streamed_and_drops_the_rest_of_its_block():
    text = '<tool_call>{"name": "add", "arguments": {"a": 1]]]}}</tool_call>after'
    assert parse(ToolFormat.HERMES, text, 1) == ("after", [("call_0", "add", '{"a": 1')])
    both = '<tool_call>{"name": "add", "arguments": null}</tool_call>'
    assert parse(ToolFormat.HERMES, both)[1] == [("call_0", "add", "{}")]


def test_a_json_answer_without_a_name_first_is_content_at_once_in_the_bare_json_format():
    parser = ToolCallParser(SYNTAX[ToolFormat.LLAMA3], NAMES)
    assert parser.feed('{"answer": ') == ('{"answer":', [])  # released at its first key, not at its end


def test_a_long_call_is_read_once():
    """Each character is scanned once however the deltas come (the parser runs on the event loop)."""
    from lmgate.backends.tools import scan

    steps = 0
    original = scan.ObjectScanner._step

    def counted(self, text, ch):
        nonlocal steps
        steps += 1
        return original(self, text, ch)

    scan.ObjectScanner._step = counted
    try:
        arguments = '{"a": "' + "x" * 20_000 + '"}'
        _, calls = parse(ToolFormat.HERMES, f'<tool_call>{{"name": "add", "arguments": {arguments}}}</tool_call>', 4)
    finally:
        scan.ObjectScanner._step = original
    assert calls == [("call_0", "add", arguments)]
    assert steps < 2 * 20_100
