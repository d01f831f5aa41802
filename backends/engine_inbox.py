"""A request's deltas crossing from an engine thread to the event loop.

The in-process engines (llama.cpp, transformers) run on threads of their own. Each request gets
an ``EngineInbox``: the engine thread calls ``sink`` with a step's deltas (or the error that killed
the engine), and the backend's ``generate`` reads them back on the loop with ``stream``, which
aborts the request in the engine when the reader goes away before every choice finished.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from lmgate.backends.errors import BackendUnavailable
from lmgate.backends.types import TokenDelta

Sink = Callable[[list[TokenDelta] | BaseException], None]
"""Receives a request's deltas of one step, or the error that ended it. Called on the engine thread."""


class EngineInbox:
    """Made on the event loop, per request; ``sink`` may be called from any thread."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[list[TokenDelta] | BaseException] = asyncio.Queue()

    def sink(self, item: list[TokenDelta] | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def stream(self, choices: int, abort: Callable[[], None], engine: str) -> AsyncIterator[TokenDelta]:
        """The deltas until ``choices`` have finished. An engine error becomes ``BackendUnavailable``
        naming ``engine``; leaving early (the consumer went away, or that error) calls ``abort``."""
        unfinished = choices
        try:
            while unfinished:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise BackendUnavailable(f"{engine} failed: {item}") from item
                for delta in item:
                    unfinished -= delta.finish_reason is not None
                    yield delta
        finally:
            if unfinished:
                abort()
