"""A request's stream whose cleanup cannot be skipped.

The layers a request's deltas pass through (the backend stream, the dispatcher's slot and retry
accounting, several prompts merged, the metrics tracker) each hold something to give back when the
stream ends. An async generator's ``finally`` does that when the generator ran, but not when it is
closed before its first item: a gRPC cancel landing between ``Dispatcher.open`` and the first read
leaked the request's admission slot for ever that way. ``ClosingStream`` runs its cleanup exactly
once, whichever comes first: the source is exhausted, it raises, or ``aclose()`` is called (also
before the first item).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Closable(Protocol[T_co]):
    """What the layers hand each other: a stream that can also be closed unread (an async generator,
    a ``ClosingStream``); closing it is how a request is aborted."""

    def __aiter__(self) -> AsyncIterator[T_co]: ...

    def __anext__(self) -> Awaitable[T_co]: ...

    def aclose(self) -> Awaitable[None]: ...


class ClosingStream(Generic[T]):
    """Iterate ``source``; ``cleanup`` is awaited once, after ``source`` is closed."""

    def __init__(self, source: Closable[T], cleanup: Callable[[], Awaitable[None]]) -> None:
        self._source = source
        self._cleanup = cleanup
        self._closed = False

    def __aiter__(self) -> ClosingStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._closed:
            raise StopAsyncIteration
        try:
            return await anext(self._source)
        except BaseException:  # the end, an error or a cancel: give back what the layers hold
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._source.aclose()
        finally:
            await self._cleanup()
