"""The function-calling corpus tiny-chat is trained on (quantize/tinychat/tool_corpus.py) teaches what
the server expects: calls of listed tools with arguments valid for their schemas, results in order."""

from __future__ import annotations

import itertools
import json

import jsonschema

from lmgate.backends.types import Role
from lmgate.quantize.tinychat.tool_corpus import tool_chats


def test_the_corpus_is_seeded():
    first, again, other = (list(itertools.islice(tool_chats(seed), 50)) for seed in (3, 3, 4))
    assert first == again != other


def test_calls_name_listed_tools_with_valid_arguments_and_get_their_results():
    names = set()
    for chat in itertools.islice(tool_chats(11), 2000):
        listed = {tool.name: json.loads(tool.parameters) for tool in chat.tools}
        assert 1 <= len(listed) <= 4
        for i, message in enumerate(chat.messages):
            for call in message.tool_calls:
                jsonschema.validate(json.loads(call.arguments), listed[call.name])
                names.add(call.name)
            if message.tool_calls:
                results = chat.messages[i + 1 : i + 1 + len(message.tool_calls)]
                assert [r.tool_call_id for r in results] == [c.id for c in message.tool_calls]
                assert all(r.role is Role.TOOL for r in results)
                assert chat.messages[i + 1 + len(message.tool_calls)].role is Role.ASSISTANT
    assert names == {"get_weather", "add", "multiply", "convert_units", "get_capital"}


def test_questions_answered_without_a_call_list_no_tool_they_need():
    for chat in itertools.islice(tool_chats(12), 2000):
        listed = {tool.name for tool in chat.tools}
        for question, reply in itertools.pairwise(chat.messages):
            if question.role is Role.USER and reply.role is Role.ASSISTANT and not reply.tool_calls:
                assert not ("capital" in question.content and "get_capital" in listed), question
                assert not ("plus" in question.content and "add" in listed), question
