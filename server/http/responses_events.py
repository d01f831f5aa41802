"""The typed server-sent events of a streamed response (``POST /v1/responses`` with ``stream: true``).

OpenAI's order, which the openai SDK's ``client.responses.stream`` checks as it assembles the response:

    response.created, response.in_progress            the response, status in_progress, no output
    response.output_item.added                        the assistant message, empty
    response.content_part.added                       its output_text part, empty
    response.output_text.delta ...                    the text as it is generated
    response.output_text.done, response.content_part.done, response.output_item.done
    response.completed | response.incomplete          the whole response, with usage

Each event is ``event: <type>`` and ``data: <json>`` carrying the same ``type`` and a
``sequence_number`` counting from 0; there is no ``[DONE]`` (OpenAI sends none). An error after the
stream started is an ``error`` event, then ``response.failed`` with the response so far.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from lmgate.server.http.protocol import TokenLogprobOut
from lmgate.server.http.responses_objects import OutputMessage, OutputText, ResponseObject
from lmgate.server.http.responses_tools import FunctionCallItem


class _Event(BaseModel):
    sequence_number: int = 0


class LifecycleEvent(_Event):
    type: Literal[
        "response.created", "response.in_progress", "response.completed", "response.incomplete", "response.failed"
    ]
    response: ResponseObject


class OutputItemEvent(_Event):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int = 0
    item: OutputMessage | FunctionCallItem


class ArgumentsDeltaEvent(_Event):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(_Event):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    arguments: str


class ContentPartEvent(_Event):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int = 0
    content_index: int = 0
    part: OutputText


class TextDeltaEvent(_Event):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    item_id: str
    output_index: int = 0
    content_index: int = 0
    delta: str
    logprobs: list[TokenLogprobOut] = Field(default_factory=list)


class TextDoneEvent(_Event):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    item_id: str
    output_index: int = 0
    content_index: int = 0
    text: str
    logprobs: list[TokenLogprobOut] = Field(default_factory=list)


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    code: str | None = None
    message: str
    param: str | None = None


ResponseEvent = (
    LifecycleEvent | OutputItemEvent | ContentPartEvent | TextDeltaEvent | TextDoneEvent | ArgumentsDeltaEvent
    | ArgumentsDoneEvent | ErrorEvent
)  # fmt: skip


class EventEncoder:
    """Numbers the events of one stream and frames them as SSE."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self, event: ResponseEvent) -> str:
        event.sequence_number = self._next
        self._next += 1
        return f"event: {event.type}\ndata: {event.model_dump_json()}\n\n"
