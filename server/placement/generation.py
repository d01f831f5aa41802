"""Running backend streams for a transport: errors up front, several prompts merged, nothing leaked.

``open_stream`` pulls the first delta before the transport commits to a response, so a request
the backend refuses becomes a clean 400 instead of a broken stream. Every stream handed out here
closes its backend generator when it is closed, which is what aborts the engine's sequences when
a client goes away.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator

from lmgate.backends.base import Backend
from lmgate.backends.errors import BackendError
from lmgate.backends.types import GenerateRequest, TokenDelta
from lmgate.server.closing_stream import Closable, ClosingStream
from lmgate.server.errors import from_backend_error


async def open_stream(backend: Backend, request: GenerateRequest) -> Closable[TokenDelta]:
    """Start ``request``; raises the gateway's error if the backend refuses it before any delta."""
    stream = backend.generate(request)
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        return _empty()
    except BackendError as exc:
        await stream.aclose()
        raise from_backend_error(exc) from exc
    except BaseException:
        await stream.aclose()
        raise
    return ClosingStream(_resume(first, stream), stream.aclose)  # closed unread: the engine aborts


async def _empty() -> AsyncGenerator[TokenDelta, None]:
    return
    yield


async def _resume(first: TokenDelta, stream: Closable[TokenDelta]) -> AsyncGenerator[TokenDelta, None]:
    try:
        yield first
        async for delta in stream:
            yield delta
    except BackendError as exc:
        raise from_backend_error(exc) from exc


async def open_streams(backend: Backend, requests: list[GenerateRequest]) -> list[Closable[TokenDelta]]:
    """``open_stream`` for all requests at once; if one is refused, the others are closed."""
    results = await asyncio.gather(*(open_stream(backend, r) for r in requests), return_exceptions=True)
    streams = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for stream in streams:
            await stream.aclose()
        raise errors[0]
    return streams


def merge(streams: list[Closable[TokenDelta]], n: int) -> Closable[TokenDelta]:
    """Interleave the streams of a batch of prompts as their deltas arrive; choice ``j`` of prompt
    ``i`` becomes choice ``i * n + j`` (OpenAI's numbering). Closing it closes them all, read or not."""
    if len(streams) == 1:
        return streams[0]

    async def close_all() -> None:
        for stream in streams:
            await stream.aclose()

    return ClosingStream(_interleave(streams, n), close_all)


async def _interleave(streams: list[Closable[TokenDelta]], n: int) -> AsyncGenerator[TokenDelta, None]:
    queue: asyncio.Queue[TokenDelta | BaseException | None] = asyncio.Queue()

    async def pump(i: int, stream: Closable[TokenDelta]) -> None:
        try:
            async for delta in stream:
                await queue.put(dataclasses.replace(delta, index=i * n + delta.index))
            await queue.put(None)
        except Exception as exc:
            await queue.put(exc)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
