"""The per-token SSE fast path writes what the chunk models write."""

import json

import pytest

from lmgate.server.http.common import TextEvents, sse
from lmgate.server.http.protocol import ChatChunkChoice, ChatCompletionChunk, ChatDelta, Completion, CompletionChoice

TEXTS = [
    " hello",
    'a "quoted" \\ back',
    "line\nbreak\ttab",
    "\x00\x1f control",
    "héllo wörld ☃ 🦆",
    "\ud7ff",
    "</script>",
]


def chat(index: int, text: str) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id="chatcmpl-1", created=7, model="m", choices=[ChatChunkChoice(index=index, delta=ChatDelta(content=text))]
    )


def completion(index: int, text: str) -> Completion:
    return Completion(id="cmpl-1", created=7, model="m", choices=[CompletionChoice(index=index, text=text)])


@pytest.mark.parametrize("render", [chat, completion])
@pytest.mark.parametrize("text", TEXTS)
def test_a_text_event_is_the_chunk_models_event(render, text):
    events = TextEvents(render)
    for index in (0, 3, 0):
        fast, slow = events(index, text), sse(render(index, text))
        assert fast.startswith("data: ") and fast.endswith("\n\n")
        assert json.loads(fast[6:]) == json.loads(slow[6:])
        assert list(json.loads(fast[6:])) == list(json.loads(slow[6:]))  # field order too
