"""A request's deltas arriving from its engine process, read back on the event loop.

The gateway's connection to an engine process (backends/engine/process.py) gets one message per
engine step and ``put``s each request's share into that request's ``EngineInbox``; the backend's
``generate`` reads them with ``stream``, which aborts the request in the engine when the reader
goes away before every choice finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from lmgate.backends.errors import BackendError
from lmgate.backends.types import TokenDelta


class EngineInbox:
    """Made and fed on the event loop, one per request."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[list[TokenDelta] | BackendError] = asyncio.Queue()

    def put(self, item: list[TokenDelta] | BackendError) -> None:
        """A step's deltas of this request, or the error that ended it."""
        self._queue.put_nowait(item)

    async def stream(self, choices: int, abort: Callable[[], None]) -> AsyncIterator[TokenDelta]:
        """The deltas until ``choices`` have finished; an error put here is raised (the engine process
        only ever puts ``BackendError``s). Leaving early (the consumer went away, or an error) calls ``abort``."""
        unfinished = choices
        try:
            while unfinished:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                for delta in item:
                    unfinished -= delta.finish_reason is not None
                    yield delta
        finally:
            if unfinished:
                abort()
