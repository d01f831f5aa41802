"""POST /v1/chat/completions, streamed (SSE) and not."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from fastapi import APIRouter, Depends, Request, Response

from lmgate.backends.types import TokenDelta, Usage
from lmgate.server.http.common import (
    TextEvents,
    answered,
    base_request_id,
    json_body,
    response_headers,
    sse,
    streamed,
    until_disconnect,
)
from lmgate.server.http.convert import ChoiceText, chat_logprobs, chat_request, usage_out
from lmgate.server.http.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessageOut,
)
from lmgate.server.http.tools_protocol import FunctionCallDeltaOut, FunctionCallOut, ToolCallDeltaOut, ToolCallOut
from lmgate.server.http.tracked import tracked
from lmgate.server.metrics import Metrics
from lmgate.server.placement.dispatch import Dispatcher

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletion, dependencies=[Depends(json_body)])
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    dispatcher: Dispatcher = request.app.state.dispatcher
    metrics: Metrics = request.app.state.metrics
    base_id = base_request_id(request)
    with tracked(request, "/v1/chat/completions", body, base_id) as (tracker, tenant):
        if metrics.log_prompts:
            tracker.prompt = json.dumps([m.model_dump(exclude_none=True) for m in body.messages])
        opening = dispatcher.open(body.model, [chat_request(body, base_id)], tenant, tracker.placed)
        dispatched = await until_disconnect(request, opening)
        stream = tracker.watch(dispatched.streams[0], body.n)
    response_id, model = f"chatcmpl-{base_id}", dispatched.model
    headers = response_headers(base_id, dispatched.ignored_params)
    if body.stream:
        events = _events(stream, response_id, model, body.n, tracker.usage, include_usage=body.include_usage)
        return streamed(events, stream, headers)
    return await answered(request, _collect(stream, response_id, model, body.n, tracker.usage, body.logprobs), headers)


async def _collect(
    stream: AsyncIterator[TokenDelta], response_id: str, model: str, n: int, usage: Callable[[], Usage], logprobs: bool
) -> ChatCompletion:
    """The whole response; ``usage`` is the request's tally (its tracker's), read once ``stream`` ended."""
    choices = [ChoiceText() for _ in range(n)]
    async for delta in stream:
        choices[delta.index].add(delta)
    return ChatCompletion(
        id=response_id,
        model=model,
        choices=[
            ChatChoice(
                index=i,
                message=_message(c),
                logprobs=chat_logprobs(c.logprobs) if logprobs else None,
                finish_reason=c.finish_reason,
            )
            for i, c in enumerate(choices)
        ],
        usage=usage_out(usage()),
    )


def _message(choice: ChoiceText) -> ChatMessageOut:
    """A choice's message: with calls, ``content`` is null unless the model wrote text besides them."""
    text, calls = "".join(choice.text), choice.tool_calls
    if not calls:
        return ChatMessageOut(content=text)
    out = [ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments)) for c in calls]
    return ChatMessageOut(content=text or None, tool_calls=out)


def _call_pieces(delta: TokenDelta) -> list[ToolCallDeltaOut] | None:
    if not delta.tool_calls:
        return None
    return [
        ToolCallDeltaOut(
            index=c.index, id=c.id, type="function" if c.id is not None else None,
            function=FunctionCallDeltaOut(name=c.name, arguments=c.arguments),
        )
        for c in delta.tool_calls
    ]  # fmt: skip


async def _events(
    stream: AsyncIterator[TokenDelta],
    response_id: str,
    model: str,
    n: int,
    usage: Callable[[], Usage],
    *,
    include_usage: bool,
) -> AsyncGenerator[str, None]:
    created = int(time.time())

    def chunk(choice: ChatChunkChoice) -> str:
        return sse(ChatCompletionChunk(id=response_id, created=created, model=model, choices=[choice]))

    text_event = TextEvents(lambda index, text: ChatCompletionChunk(
        id=response_id, created=created, model=model,
        choices=[ChatChunkChoice(index=index, delta=ChatDelta(content=text))],
    ))  # fmt: skip

    for i in range(n):
        yield chunk(ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content="")))
    async for delta in stream:
        if delta.text and not (delta.logprobs or delta.tool_calls or delta.finish_reason is not None):
            yield text_event(delta.index, delta.text)  # the common case: text alone
        elif delta.logprobs or delta.tool_calls or delta.finish_reason is not None:
            yield chunk(
                ChatChunkChoice(
                    index=delta.index,
                    delta=ChatDelta(content=delta.text or None, tool_calls=_call_pieces(delta)),
                    logprobs=chat_logprobs(delta.logprobs) if delta.logprobs else None,
                    finish_reason=delta.finish_reason.value if delta.finish_reason else None,
                )
            )
    if include_usage:
        yield sse(
            ChatCompletionChunk(id=response_id, created=created, model=model, choices=[], usage=usage_out(usage()))
        )
