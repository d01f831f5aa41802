"""A streamed response's output items as OpenAI's typed events, from the choice's deltas.

Items open in the order their content arrives, which is the order of the final response's output:
the message at its first text (``output_item.added``, ``content_part.added``, then
``output_text.delta``s, for all its text, before and after calls), each function call at its first
piece (``output_item.added`` with the name, then ``function_call_arguments.delta``s). A call is done
when the next one opens or the response ends; the message when the response ends. A response with
neither text nor calls still has its (empty) message, as a plain answer does.
"""

from __future__ import annotations

from collections.abc import Iterator

from lmgate.backends.types import TokenDelta
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
from lmgate.server.http.responses_tools import output_item


class StreamedItems:
    """The output items of one streamed response; ``add`` each delta (after the answer took it), then
    ``close`` with the final response."""

    def __init__(self, draft: ResponseDraft, answer: ResponseText) -> None:
        self._draft = draft
        self._answer = answer
        self._items = 0
        self._message: int | None = None
        """The message's output index, once open."""
        self._calls: dict[int, int] = {}
        """Output index of each call opened, by the call's index."""
        self._open_call: int | None = None

    def add(self, delta: TokenDelta) -> Iterator[ResponseEvent]:
        if delta.text:
            yield from self._open_message()
            logprobs = chat_logprobs(delta.logprobs).content or [] if self._answer.logprobs else []
            yield TextDeltaEvent(item_id=self._draft.message_id, output_index=self._message or 0, delta=delta.text,
                                 logprobs=logprobs)  # fmt: skip
        for piece in delta.tool_calls:
            if piece.index not in self._calls:
                yield from self._close_call()
                self._calls[piece.index] = self._items
                self._items += 1
                self._open_call = piece.index
                item = output_item(self._answer.call(piece.index), "in_progress").model_copy(update={"arguments": ""})
                yield OutputItemEvent(type="response.output_item.added", output_index=self._calls[piece.index],
                                      item=item)  # fmt: skip
            if piece.arguments:
                item_id = output_item(self._answer.call(piece.index), "in_progress").id or ""
                yield ArgumentsDeltaEvent(item_id=item_id, output_index=self._calls[piece.index], delta=piece.arguments)

    def close(self, final: ResponseObject) -> Iterator[ResponseEvent]:
        """The ``…done`` events of the items still open (the message's from ``final``)."""
        status: MessageStatus = "completed" if final.status == "completed" else "incomplete"
        yield from self._close_call(status)
        if self._message is None and not self._calls:
            yield from self._open_message()
        message = next((item for item in final.output if isinstance(item, OutputMessage)), None)
        if self._message is not None and message is not None:
            part, item_id, index = message.content[0], self._draft.message_id, self._message
            yield TextDoneEvent(item_id=item_id, output_index=index, text=part.text, logprobs=part.logprobs or [])
            yield ContentPartEvent(type="response.content_part.done", item_id=item_id, output_index=index, part=part)
            yield OutputItemEvent(type="response.output_item.done", output_index=index, item=message)

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

    def _close_call(self, status: MessageStatus = "completed") -> Iterator[ResponseEvent]:
        if self._open_call is None:
            return
        call, index = self._answer.call(self._open_call), self._calls[self._open_call]
        self._open_call = None
        item = output_item(call, status)
        yield ArgumentsDoneEvent(item_id=item.id or "", output_index=index, arguments=call.arguments)
        yield OutputItemEvent(type="response.output_item.done", output_index=index, item=item)
