"""Small pieces every OpenAI route uses: request ids, SSE framing, client-disconnect handling."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from lmgate.server.closing_stream import Closable
from lmgate.server.errors import ClientDisconnected, InvalidRequestError, LmgateError

REQUEST_ID_HEADER = "X-Request-Id"
IGNORED_PARAMS_HEADER = "X-Lmgate-Ignored-Params"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
T = TypeVar("T")


def base_request_id(request: Request) -> str:
    """The client's ``X-Request-Id`` when it is a sane token, else a fresh random id."""
    given = request.headers.get(REQUEST_ID_HEADER)
    return given if given and _SAFE_ID.match(given) else uuid.uuid4().hex


async def json_body(request: Request) -> None:
    """A route dependency: the body must be sent as JSON (``Content-Type: application/json``).

    NOTE: as vLLM's OpenAI server does (``validate_json_request``): a body sent as something else is
    refused with a message saying so, rather than parsed anyway (llama-server parses any body). The
    common case is ``curl -d`` without ``-H``, which sends a form, and whose body pydantic would only
    call "not a valid dictionary". Browsers can send forms across origins without a preflight; JSON
    they cannot, so accepting only JSON also keeps cross-site form posts out.
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    error = InvalidRequestError(
        f"the request body must be JSON, sent with `Content-Type: application/json` (this request's is "
        f"{media[:60] or 'missing'}): with curl, add -H 'Content-Type: application/json'",
        code="unsupported_media_type",
    )
    request.app.state.metrics.rejected("http", request.url.path, error)
    raise error


def sse(chunk: BaseModel) -> str:
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"


class TextEvents:
    """The ``data:`` events of text-only deltas, without a pydantic model per token.

    ``render(index, text)`` builds the route's own chunk model; it is rendered once per choice index
    with a marker for the text, and each event is that rendering with the JSON-escaped text in the
    marker's place: the same fields, order and names as ``sse(render(index, text))``, for a
    fraction of the CPU (the per-token path of every stream; issue 22).
    """

    _MARK = "\ue000lmgate-text\ue000"  # private-use characters: written as they are by pydantic's JSON

    def __init__(self, render: Callable[[int, str], BaseModel]) -> None:
        self._render = render
        self._parts: dict[int, tuple[str, str]] = {}

    def __call__(self, index: int, text: str) -> str:
        parts = self._parts.get(index)
        if parts is None:
            head, mark, tail = sse(self._render(index, self._MARK)).partition(self._MARK)
            assert mark, "the chunk model must write the text as it is"
            parts = self._parts[index] = (head, tail)
        return parts[0] + json.dumps(text, ensure_ascii=False)[1:-1] + parts[1]


def sse_error(exc: LmgateError) -> str:
    """An error after the stream started: one event with the OpenAI error body (as vLLM does)."""
    return f"data: {json.dumps(exc.body())}\n\n"


SSE_DONE = "data: [DONE]\n\n"


async def sse_stream(events: Closable[str], source: Closable[object]) -> AsyncGenerator[str, None]:
    """``events``, then ``[DONE]``; an error mid-stream becomes one error event, and ``source``
    (the backend stream) is closed however the stream ends, the client leaving included."""
    try:
        async for event in events:
            yield event
    except LmgateError as exc:
        yield sse_error(exc)
    finally:
        await events.aclose()
        await source.aclose()
    yield SSE_DONE


def response_headers(request_id: str, ignored_params: tuple[str, ...] = ()) -> dict[str, str]:
    """The request id, and the parameters a lenient model did not honour."""
    headers = {REQUEST_ID_HEADER: request_id}
    if ignored_params:
        headers[IGNORED_PARAMS_HEADER] = ",".join(ignored_params)
    return headers


def streamed(events: Closable[str], source: Closable[object], headers: dict[str, str]) -> StreamingResponse:
    return StreamingResponse(sse_stream(events, source), media_type="text/event-stream", headers=headers)


async def answered(request: Request, work: Awaitable[BaseModel], headers: dict[str, str]) -> Response:
    """The JSON response ``work`` builds, unless the client disconnects first."""
    body = await until_disconnect(request, work)
    return Response(body.model_dump_json(), media_type="application/json", headers=headers)


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first: a non-streamed response, and
    the opening of every request (queued for a slot, or waiting for a first delta that a beam
    search only sends at its end).

    Cancelling ``work`` closes its backend stream, which aborts the engine's sequences.
    """
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    listener = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, listener}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        listener.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientDisconnected
