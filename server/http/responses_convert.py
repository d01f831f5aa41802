"""A Responses API request → the internal chat ``GenerateRequest``; its deltas → the final response.

A response is a chat generation: ``instructions`` become the system message, then come the stored
conversation of ``previous_response_id`` (server/http/responses_store.py), then this request's input
(text is one user message). The result goes through the same dispatcher, engines and sampling
rules as ``/v1/chat/completions`` (server/http/convert.py's ``sampling_params``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lmgate.backends.types import ChatMessage, GenerateRequest, Role, TokenDelta, Usage
from lmgate.server.errors import InvalidRequestError
from lmgate.server.http.convert import ChoiceText, chat_logprobs, sampling_params, usage_out
from lmgate.server.http.responses_objects import (
    OutputText,
    ResponseDraft,
    ResponseObject,
    ResponseUsage,
    ending_fields,
    final_status,
)
from lmgate.server.http.responses_protocol import ResponsesRequest
from lmgate.server.http.responses_store import ResponseStore


def input_messages(body: ResponsesRequest) -> tuple[ChatMessage, ...]:
    if isinstance(body.input, str):
        return (ChatMessage(Role.USER, body.input),)
    return tuple(ChatMessage(Role(item.role), item.text) for item in body.input)


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
        cache_salt=body.cache_salt,
    )


@dataclass
class ResponseText:
    """The one output of a response, assembled from its deltas."""

    logprobs: bool
    usage: Callable[[], Usage]
    """The request's usage tally (its tracker's), read when the response is final."""
    choice: ChoiceText = field(default_factory=ChoiceText)

    def add(self, delta: TokenDelta) -> None:
        self.choice.add(delta)

    @property
    def text(self) -> str:
        return "".join(self.choice.text)

    def part(self) -> OutputText:
        logprobs = chat_logprobs(self.choice.logprobs).content if self.logprobs else None
        return OutputText(text=self.text, logprobs=logprobs)

    def final(self, draft: ResponseDraft) -> ResponseObject:
        """The finished response: completed, or incomplete when the token limit cut it."""
        status = final_status(self.choice.finish_reason)
        message = draft.message("incomplete" if status != "completed" else "completed", [self.part()])
        usage = ResponseUsage.of(usage_out(self.usage()))
        return draft.response(status, output=[message], usage=usage, **ending_fields(status))
