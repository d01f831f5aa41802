"""The thread an in-process engine runs on: one step at a time, commands between steps.

The llama.cpp and transformers engines share this shape. Requests and aborts arrive from the
event loop through a thread-safe inbox and are applied between steps; each step's deltas are
handed, one call per request, to the request's sink (backends/engine_inbox.py); the thread sleeps
while there is nothing to do. If a step raises, the engine is dead: every request still known is
told why, and ``failed`` is set. Subclasses say what a step is and how a request is added and
aborted.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import queue
import threading
from typing import Generic, Protocol, TypeVar

from lmgate.backends.engine_inbox import Sink
from lmgate.backends.types import BackendStats, TokenDelta

log = logging.getLogger(__name__)

_STOP = object()


class EngineRequest(Protocol):
    request_id: str
    sink: Sink
    unfinished: int
    """Choices without a finish reason yet; the request is forgotten once it reaches 0."""


R = TypeVar("R", bound=EngineRequest)


class EngineThread(abc.ABC, Generic[R]):
    """``add``/``abort``/``stats``/``stop`` are thread-safe; everything else runs on the thread."""

    def __init__(self, name: str) -> None:
        self._inbox: queue.SimpleQueue[R | str | object] = queue.SimpleQueue()
        self._requests: dict[str, R] = {}
        self._outbox: dict[str, list[TokenDelta]] = {}
        self._stats = BackendStats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.failed: BaseException | None = None

    # --- any thread ---

    def start(self) -> None:
        self._thread.start()

    def add(self, request: R) -> None:
        self._inbox.put(request)

    def abort(self, request_id: str) -> None:
        self._inbox.put(request_id)

    def stats(self) -> BackendStats:
        return self._stats

    def stop(self) -> None:
        """Abort everything and end the thread."""
        if self._thread.is_alive():
            self._inbox.put(_STOP)
            self._thread.join()

    # --- what an engine is ---

    @property
    @abc.abstractmethod
    def has_work(self) -> bool:
        """Something is running or waiting: the thread steps instead of sleeping."""

    @abc.abstractmethod
    def step(self) -> None:
        """One engine step; queue its deltas with ``_emit``."""

    @abc.abstractmethod
    def _accept(self, request: R) -> None:
        """Queue a new request (it is already in ``_requests``)."""

    @abc.abstractmethod
    def _abort(self, request_id: str) -> None:
        """End the request's unfinished choices with ``abort`` deltas, free what it holds."""

    @abc.abstractmethod
    def _after_step(self) -> None:
        """Book-keeping between steps: publish a fresh ``_stats``."""

    def _thread_context(self) -> contextlib.AbstractContextManager[object]:
        """Entered once on the engine thread, around all of its work."""
        return contextlib.nullcontext()

    # --- engine thread ---

    def _emit(self, request_id: str, deltas: list[TokenDelta]) -> None:
        self._outbox.setdefault(request_id, []).extend(deltas)

    def _run(self) -> None:
        try:
            with self._thread_context():
                while self._apply_inbox(block=not self.has_work):
                    if self.has_work:
                        self.step()
                    self._after_step()
                    self._deliver()
        except BaseException as exc:  # the engine is dead: tell every waiting request why
            log.exception("%s failed", self._thread.name)
            self.failed = exc
            for request in self._requests.values():
                request.sink(exc)
            self._requests.clear()
        finally:
            for request_id in list(self._requests):
                self._abort(request_id)
            self._deliver()

    def _deliver(self) -> None:
        """Hand each request its deltas of this step, after the step's book-keeping, so a client
        that sees its last delta also sees what it held freed."""
        for request_id, deltas in self._outbox.items():
            request = self._requests.get(request_id)
            if request is None:
                continue  # failed and told already
            request.sink(deltas)
            if request.unfinished == 0:
                del self._requests[request_id]
        self._outbox.clear()

    def _apply_inbox(self, *, block: bool) -> bool:
        """Apply queued commands (waiting for one if ``block``); False once asked to stop."""
        while True:
            try:
                command = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if command is _STOP:
                return False
            if isinstance(command, str):
                self._abort(command)
            else:
                request: R = command  # type: ignore[assignment]
                self._requests[request.request_id] = request
                self._accept(request)
