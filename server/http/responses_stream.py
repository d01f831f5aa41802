"""A streamed response's output items as OpenAI's typed events, from the choice's deltas.

Items open as their content arrives: the message at its first text (``output_item.added``,
``content_part.added``, then ``output_text.delta``s), each function call at its first piece
(``output_item.added`` with the name, then ``function_call_arguments.delta``s). An item is done
(``…done`` events) when the next one opens or the response ends; a response with neither text nor
calls still has its (empty) message, as a plain answer does.
"""

from __future__ import annotations

from collections.abc import Iterator

from lmgate.backends.types import TokenDelta, ToolCall
from lmgate.server.http.convert import chat_logprobs
from lmgate.server.http.responses_convert import ResponseText
from lmgate.server.http.responses_events import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    OutputItemEvent,
    ResponseEvent,
    TextDeltaEvent,
    TextDoneEvent,
)
from lmgate.server.http.responses_objects import MessageStatus, OutputMessage, OutputText, ResponseDraft, ResponseObject
from lmgate.server.http.responses_tools import FunctionCallItem, output_item


class StreamedItems:
    """The output items of one streamed response; ``add`` each delta (after the answer took it), then
    ``close`` with the final response."""

    def __init__(self, draft: ResponseDraft, answer: ResponseText) -> None:
        self._draft = draft
        self._answer = answer
        self._items = 0
        self._message: int | None = None
        """The message's output index, once open."""
        self._message_done = False
        self._call: tuple[int, int] | None = None
        """(call index, output index) of the call being streamed."""

    def add(self, delta: TokenDelta) -> Iterator[ResponseEvent]:
        if delta.text or (delta.logprobs and not delta.tool_calls):
            yield from self._open_message()
            logprobs = chat_logprobs(delta.logprobs).content or [] if self._answer.logprobs else []
            yield TextDeltaEvent(item_id=self._draft.message_id, output_index=self._message or 0, delta=delta.text,
                                 logprobs=logprobs)  # fmt: skip
        for piece in delta.tool_calls:
            if piece.name is not None:
                yield from self._close_call()
                yield from self._done_message(self._draft.message("completed", [self._answer.part()]))
                self._call = (piece.index, self._items)
                self._items += 1
                item = output_item(self._current(), "in_progress").model_copy(update={"arguments": ""})
                yield OutputItemEvent(type="response.output_item.added", output_index=self._call[1], item=item)
            if piece.arguments and self._call is not None:
                item_id = output_item(self._current(), "in_progress").id
                yield ArgumentsDeltaEvent(item_id=item_id, output_index=self._call[1], delta=piece.arguments)

    def close(self, final: ResponseObject) -> Iterator[ResponseEvent]:
        """The ``…done`` events of the items still open (the message's from ``final``)."""
        yield from self._close_call(final)
        if self._message is None and not self._answer.calls:
            yield from self._open_message()
        message = next((item for item in final.output if not isinstance(item, FunctionCallItem)), None)
        if message is not None:
            yield from self._done_message(message)

    def _current(self) -> ToolCall:
        assert self._call is not None
        return self._answer.calls[self._call[0]]

    def _open_message(self) -> Iterator[ResponseEvent]:
        if self._message is not None:
            return
        self._message = self._items
        self._items += 1
        draft = self._draft
        yield OutputItemEvent(type="response.output_item.added", output_index=self._message,
                              item=draft.message("in_progress", []))  # fmt: skip
        yield ContentPartEvent(type="response.content_part.added", item_id=draft.message_id,
                               output_index=self._message, part=OutputText(text=""))  # fmt: skip

    def _done_message(self, message: object) -> Iterator[ResponseEvent]:
        if self._message is None or self._message_done or not isinstance(message, OutputMessage):
            return
        self._message_done = True
        part, item_id, index = message.content[0], self._draft.message_id, self._message
        yield TextDoneEvent(item_id=item_id, output_index=index, text=part.text, logprobs=part.logprobs or [])
        yield ContentPartEvent(type="response.content_part.done", item_id=item_id, output_index=index, part=part)
        yield OutputItemEvent(type="response.output_item.done", output_index=index, item=message)

    def _close_call(self, final: ResponseObject | None = None) -> Iterator[ResponseEvent]:
        if self._call is None:
            return
        call, index = self._current(), self._call[1]
        self._call = None
        status: MessageStatus = "completed" if final is None or final.status == "completed" else "incomplete"
        item = output_item(call, status)
        yield ArgumentsDoneEvent(item_id=item.id or "", output_index=index, arguments=call.arguments)
        yield OutputItemEvent(type="response.output_item.done", output_index=index, item=item)
