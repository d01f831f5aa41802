"""POST /v1/completions, streamed (SSE) and not, with batched prompts and ``echo``.

Choice ``index`` is ``prompt_index * n + choice``, as OpenAI numbers the choices of a batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from fastapi import APIRouter, Depends, Request, Response

from lmgate.backends.base import Backend
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
from lmgate.server.http.convert import ChoiceText, completion_logprobs, completion_requests, usage_out
from lmgate.server.http.protocol import Completion, CompletionChoice, CompletionRequest
from lmgate.server.http.tracked import tracked
from lmgate.server.metrics import Metrics
from lmgate.server.placement.dispatch import Dispatcher
from lmgate.server.placement.generation import merge

router = APIRouter()


@router.post("/v1/completions", response_model=Completion, dependencies=[Depends(json_body)])
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    dispatcher: Dispatcher = request.app.state.dispatcher
    metrics: Metrics = request.app.state.metrics
    base_id = base_request_id(request)
    with tracked(request, "/v1/completions", body, base_id) as (tracker, tenant):
        if metrics.log_prompts:
            tracker.prompt = json.dumps(body.prompt)
        opening = dispatcher.open(body.model, completion_requests(body, base_id), tenant, tracker.placed)
        dispatched = await until_disconnect(request, opening)
        deltas = tracker.watch(merge(dispatched.streams, body.n), body.n)
        try:
            echoes = await _echo_texts(dispatched.backend, body) if body.echo else None
        except BaseException:
            await deltas.aclose()
            raise
    response_id, model = f"cmpl-{base_id}", dispatched.model
    headers = response_headers(base_id, dispatched.ignored_params)
    if body.stream:
        events = _events(deltas, response_id, model, body.n, echoes, tracker.usage, include_usage=body.include_usage)
        return streamed(events, deltas, headers)
    return await answered(request, _collect(deltas, response_id, model, body, echoes, tracker.usage), headers)


async def _echo_texts(backend: Backend, body: CompletionRequest) -> list[str]:
    return [p if isinstance(p, str) else await backend.detokenize(p) for p in body.prompts]


async def _collect(
    deltas: AsyncIterator[TokenDelta],
    response_id: str,
    model: str,
    body: CompletionRequest,
    echoes: list[str] | None,
    usage: Callable[[], Usage],
) -> Completion:
    """The whole response; ``usage`` is the request's tally (its tracker's), read once ``deltas`` ended."""
    n = body.n
    choices = [ChoiceText() for _ in range(n * len(body.prompts))]
    async for delta in deltas:
        choices[delta.index].add(delta)
    out = []
    for i, c in enumerate(choices):
        prefix = echoes[i // n] if echoes else ""
        logprobs = completion_logprobs(c.logprobs, len(prefix)) if body.logprobs is not None else None
        out.append(
            CompletionChoice(index=i, text=prefix + "".join(c.text), logprobs=logprobs, finish_reason=c.finish_reason)
        )
    return Completion(id=response_id, model=model, choices=out, usage=usage_out(usage()))


async def _events(
    deltas: AsyncIterator[TokenDelta],
    response_id: str,
    model: str,
    n: int,
    echoes: list[str] | None,
    usage: Callable[[], Usage],
    *,
    include_usage: bool,
) -> AsyncGenerator[str, None]:
    created = int(time.time())

    def chunk(choice: CompletionChoice) -> str:
        return sse(Completion(id=response_id, created=created, model=model, choices=[choice]))

    text_event = TextEvents(lambda index, text: Completion(
        id=response_id, created=created, model=model, choices=[CompletionChoice(index=index, text=text)]
    ))  # fmt: skip

    offsets: dict[int, int] = {}
    for prompt_index, text in enumerate(echoes or []):
        for j in range(n):
            offsets[prompt_index * n + j] = len(text)
            yield chunk(CompletionChoice(index=prompt_index * n + j, text=text))
    async for delta in deltas:
        if not (delta.text or delta.logprobs or delta.finish_reason is not None):
            continue
        index = delta.index
        offset = offsets.get(index, 0)
        if not delta.logprobs and delta.finish_reason is None:  # the common case: text alone
            offsets[index] = offset + len(delta.text)
            yield text_event(index, delta.text)
            continue
        logprobs = completion_logprobs(list(delta.logprobs), offset) if delta.logprobs else None
        offsets[index] = offset + len(delta.text)
        reason = delta.finish_reason.value if delta.finish_reason else None
        yield chunk(CompletionChoice(index=index, text=delta.text, logprobs=logprobs, finish_reason=reason))
    if include_usage:
        yield sse(Completion(id=response_id, created=created, model=model, choices=[], usage=usage_out(usage())))
