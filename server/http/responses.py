"""POST /v1/responses (OpenAI's Responses API), streamed with typed events and not; GET and DELETE
/v1/responses/{id} for stored responses.

A response runs as a chat generation (server/http/responses_convert.py) through the same dispatcher,
limits, admission, metrics and request log as ``/v1/chat/completions``, under the endpoint
``/v1/responses``. A finished response is stored when ``store`` is true (server/http/responses_store.py)
so that a later request can continue it with ``previous_response_id``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from lmgate.backends.types import ChatMessage, TokenDelta
from lmgate.server.closing_stream import Closable
from lmgate.server.errors import LmgateError, NotFoundError
from lmgate.server.http.common import answered, base_request_id, json_body, response_headers, until_disconnect
from lmgate.server.http.responses_convert import ResponseText, generate_request, history, input_messages
from lmgate.server.http.responses_events import ErrorEvent, EventEncoder, LifecycleEvent
from lmgate.server.http.responses_objects import (
    DeletedResponse,
    ResponseDraft,
    ResponseError,
    ResponseObject,
)
from lmgate.server.http.responses_protocol import ResponsesRequest
from lmgate.server.http.responses_store import ResponseStore
from lmgate.server.http.responses_stream import StreamedItems
from lmgate.server.http.tracked import tracked
from lmgate.server.metrics import Metrics
from lmgate.server.placement.dispatch import Dispatcher
from lmgate.server.tenancy.http import tenant_of

router = APIRouter(tags=["responses"])
ENDPOINT = "/v1/responses"


@router.post(ENDPOINT, response_model=ResponseObject, dependencies=[Depends(json_body)])
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    dispatcher: Dispatcher = request.app.state.dispatcher
    metrics: Metrics = request.app.state.metrics
    store: ResponseStore = request.app.state.responses
    base_id = base_request_id(request)
    with tracked(request, ENDPOINT, body, base_id) as (tracker, tenant):
        owner = tenant.name if tenant is not None else None
        conversation = history(body, store, owner) + input_messages(body)
        if metrics.log_prompts:
            tracker.prompt = json.dumps([{"role": m.role.value, "content": m.content} for m in conversation])
        internal = generate_request(body, base_id, conversation)
        dispatched = await until_disconnect(request, dispatcher.open(body.model, [internal], tenant, tracker.placed))
        stream = tracker.watch(dispatched.streams[0], 1)
    draft = ResponseDraft(body, dispatched.pool.name)
    answer = ResponseText(logprobs=body.logprobs is not None, usage=tracker.usage)
    turn = _Turn(draft, answer, store if body.store else None, conversation, owner)
    headers = response_headers(base_id, dispatched.ignored_params)
    if body.stream:
        events = _closing(_events(stream, turn), stream)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    return await answered(request, _collect(stream, turn), headers)


class _Turn:
    """One response in the making, and where it is kept when it finishes (None: ``store: false``)."""

    def __init__(
        self, draft: ResponseDraft, answer: ResponseText, store: ResponseStore | None,
        conversation: tuple[ChatMessage, ...], owner: str | None,
    ) -> None:  # fmt: skip
        self.draft = draft
        self.answer = answer
        self.store = store
        self.conversation = conversation
        self.owner = owner

    def finish(self) -> ResponseObject:
        """The final response, stored when asked and it did not fail."""
        final = self.answer.final(self.draft)
        if self.store is not None and final.status != "failed":
            self.store.put(final, (*self.conversation, self.answer.answer()), self.owner)
        return final


async def _collect(stream: AsyncIterator[TokenDelta], turn: _Turn) -> ResponseObject:
    async for delta in stream:
        turn.answer.add(delta)
    return turn.finish()


async def _events(stream: AsyncIterator[TokenDelta], turn: _Turn) -> AsyncGenerator[str, None]:
    encode, draft, answer = EventEncoder(), turn.draft, turn.answer
    items = StreamedItems(draft, answer)
    for kind in ("response.created", "response.in_progress"):
        yield encode(LifecycleEvent(type=kind, response=draft.response("in_progress")))
    try:
        async for delta in stream:
            answer.add(delta)
            for event in items.add(delta):
                yield encode(event)
    except LmgateError as exc:
        yield encode(ErrorEvent(code=exc.code or exc.error_type, message=exc.message, param=exc.param))
        failed = draft.response(
            "failed", output=[draft.message("incomplete", [answer.part()])],
            error=ResponseError(code=exc.code or exc.error_type, message=exc.message),
        )  # fmt: skip
        yield encode(LifecycleEvent(type="response.failed", response=failed))
        return
    final = turn.finish()
    for event in items.close(final):
        yield encode(event)
    yield encode(LifecycleEvent(type=f"response.{final.status}", response=final))


async def _closing(events: Closable[str], source: Closable[TokenDelta]) -> AsyncGenerator[str, None]:
    """``events``; the backend stream is closed however they end, the client leaving included."""
    try:
        async for event in events:
            yield event
    finally:
        await events.aclose()
        await source.aclose()


def _owner(request: Request) -> str | None:
    """Whose stored responses a request may read: its tenant's (None without key records)."""
    tenant = tenant_of(request)
    return tenant.name if tenant is not None else None


def _stored(request: Request, response_id: str) -> ResponseObject:
    store: ResponseStore = request.app.state.responses
    entry = store.get(response_id, _owner(request))
    if entry is None:
        shown = response_id[:80]
        raise NotFoundError(f"Response with id '{shown}' not found.", param="response_id")
    return entry.response


@router.get(f"{ENDPOINT}/{{response_id}}", response_model=ResponseObject)
async def retrieve_response(response_id: str, request: Request) -> ResponseObject:
    """A stored response (404 when never stored, expired or pushed out)."""
    return _stored(request, response_id)


@router.delete(f"{ENDPOINT}/{{response_id}}", response_model=DeletedResponse)
async def delete_response(response_id: str, request: Request) -> DeletedResponse:
    """Forget a stored response: it can no longer be continued or retrieved."""
    _stored(request, response_id)
    request.app.state.responses.delete(response_id, _owner(request))
    return DeletedResponse(id=response_id)
