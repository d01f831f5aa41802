"""A Responses API request → the internal chat ``GenerateRequest``; its deltas → the final response.

A response is a chat generation: ``instructions`` become the system message, then come the stored
conversation of ``previous_response_id`` (server/http/responses_store.py), then this request's input
(text is one user message). The result goes through the same dispatcher, engines and sampling
rules as ``/v1/chat/completions`` (server/http/convert.py's ``sampling_params``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lmgate.backends.types import ChatMessage, GenerateRequest, Role, TokenDelta, ToolCall, Usage
from lmgate.server.errors import InvalidRequestError
from lmgate.server.http.convert import ChoiceText, chat_logprobs, sampling_params, usage_out
from lmgate.server.http.responses_objects import (
    MessageStatus,
    OutputMessage,
    OutputText,
    ResponseDraft,
    ResponseObject,
    ResponseUsage,
    ending_fields,
    final_status,
)
from lmgate.server.http.responses_protocol import ResponsesRequest
from lmgate.server.http.responses_store import ResponseStore
from lmgate.server.http.responses_tools import FunctionCallItem, FunctionCallOutputItem, merged, output_item


def input_messages(body: ResponsesRequest) -> tuple[ChatMessage, ...]:
    """The input as chat messages: a function call joins the assistant turn before it, its output is a
    tool message."""
    if isinstance(body.input, str):
        return (ChatMessage(Role.USER, body.input),)
    messages: list[ChatMessage] = []
    for item in body.input:
        if isinstance(item, FunctionCallItem | FunctionCallOutputItem):
            merged(messages, item)
        else:
            messages.append(ChatMessage(Role(item.role), item.text))
    return tuple(messages)


def history(body: ResponsesRequest, store: ResponseStore, owner: str | None = None) -> tuple[ChatMessage, ...]:
    """The conversation ``previous_response_id`` closes (empty without one); a 400 naming the field,
    with OpenAI's code, when it is not stored (never was, ``store: false``, expired, pushed out)."""
    if body.previous_response_id is None:
        return ()
    entry = store.get(body.previous_response_id, owner)
    if entry is None:
        raise InvalidRequestError(
            f"Previous response with id '{body.previous_response_id}' not found. Responses are kept "
            f"{store.ttl_s:g} s and at most {store.max_entries} of them (server.responses_store_ttl_s, "
            "responses_store_max), only with store: true: send the whole conversation as `input` instead.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return entry.conversation


def generate_request(body: ResponsesRequest, request_id: str, conversation: tuple[ChatMessage, ...]) -> GenerateRequest:
    """``conversation`` is the earlier turns and this input; instructions go first, as the system message."""
    system = (ChatMessage(Role.SYSTEM, body.instructions),) if body.instructions else ()
    return GenerateRequest(
        request_id=request_id,
        model=body.model,
        sampling=sampling_params(body, max_tokens=body.output_limit, logprobs=body.logprobs),
        messages=system + conversation,
        tools=body.tool_set,
        cache_salt=body.cache_salt,
    )


@dataclass
class ResponseText:
    """The one output of a response, assembled from its deltas."""

    logprobs: bool
    usage: Callable[[], Usage]
    """The request's usage tally (its tracker's), read when the response is final."""
    choice: ChoiceText = field(default_factory=ChoiceText)
    text_first: bool | None = None
    """Whether text came before any call (the message is then the first output item); None until
    either came."""

    def add(self, delta: TokenDelta) -> None:
        if self.text_first is None and (delta.text or delta.tool_calls):
            self.text_first = not delta.tool_calls
        self.choice.add(delta)

    def call(self, index: int) -> ToolCall:
        """The call of that index so far."""
        return ToolCall(*self.choice.calls[index])

    @property
    def text(self) -> str:
        return "".join(self.choice.text)

    def part(self) -> OutputText:
        logprobs = chat_logprobs(self.choice.logprobs).content if self.logprobs else None
        return OutputText(text=self.text, logprobs=logprobs)

    @property
    def calls(self) -> list[ToolCall]:
        return self.choice.tool_calls

    def answer(self) -> ChatMessage:
        """The answer as the conversation's next turn (what ``previous_response_id`` continues)."""
        return ChatMessage(Role.ASSISTANT, self.text, tuple(self.calls))

    def final(self, draft: ResponseDraft) -> ResponseObject:
        """The finished response: completed, or incomplete when the token limit cut it. Its output is the
        message (left out when the answer is only calls) and a ``function_call`` item per call."""
        status = final_status(self.choice.finish_reason)
        item_status: MessageStatus = "incomplete" if status != "completed" else "completed"
        output: list[OutputMessage | FunctionCallItem] = [output_item(call, item_status) for call in self.calls]
        if self.text or not self.calls:  # in the order the stream opened them
            message = draft.message(item_status, [self.part()])
            output.insert(0 if self.text_first is not False else len(output), message)
        usage = ResponseUsage.of(usage_out(self.usage()))
        return draft.response(status, output=output, usage=usage, **ending_fields(status))
