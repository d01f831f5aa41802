"""The thread an engine runs on inside its engine process: one step at a time, commands between steps.

The llama.cpp and transformers engines share this shape. Requests and aborts arrive from the
engine process's command thread through a thread-safe inbox and are applied between steps; each
step's deltas, of every request, are handed to ``publish`` in one call (the engine process sends
them to the gateway as one message: backends/engine/host.py); the thread sleeps while there is
nothing to do. If a step raises, the engine is dead: ``failed`` is set and ``on_failure`` told (the
engine process then exits and its supervisor restarts it). Subclasses say what a step is and how a
request is added and aborted.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from lmgate.backends.types import BackendStats, TokenDelta

log = logging.getLogger(__name__)


class _Stop:
    """The inbox command that ends the loop."""


_STOP = _Stop()


@dataclass(frozen=True, slots=True)
class _Call:
    """An inbox command that runs a function on the engine thread, between steps."""

    fn: Callable[[], None]


StepOutputs = dict[str, list[TokenDelta]]
"""One step's new deltas, by request id."""
Publish = Callable[[StepOutputs], None]
"""Receives each step's deltas (possibly none: stats may have changed). Called on the engine thread."""


def _log_failure(exc: BaseException) -> None:
    log.error("engine failed: %s", exc)


class EngineRequest(Protocol):
    request_id: str
    unfinished: int
    """Choices without a finish reason yet; the request is forgotten once it reaches 0."""


R = TypeVar("R", bound=EngineRequest)


class EngineThread(abc.ABC, Generic[R]):
    """``add``/``abort``/``stats``/``stop`` are thread-safe; everything else runs on the thread."""

    def __init__(self, name: str, publish: Publish, on_failure: Callable[[BaseException], None] | None = None) -> None:
        self._publish = publish
        self._on_failure = on_failure or _log_failure
        self._inbox: queue.SimpleQueue[R | str | _Stop | _Call] = queue.SimpleQueue()
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

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the engine thread between two steps (waking it if it sleeps)."""
        self._inbox.put(_Call(fn))

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
        """Queue ``deltas`` of ``request_id``; published together after the step (``_deliver``)."""
        self._outbox.setdefault(request_id, []).extend(deltas)

    def _run(self) -> None:
        try:
            with self._thread_context():
                while self._apply_inbox(block=not self.has_work):
                    if self.has_work:
                        self.step()
                    self._after_step()
                    self._deliver()
        except BaseException as exc:  # the engine is dead: its process ends, the gateway fails its requests
            log.exception("%s failed", self._thread.name)
            self.failed = exc
            self._requests.clear()
            self._on_failure(exc)
            return
        for request_id in list(self._requests):  # asked to stop: abort what is left
            self._abort(request_id)
        self._deliver()

    def _deliver(self) -> None:
        """Publish the step's deltas after its book-keeping, so a client that sees its last delta
        also sees what it held freed; forget finished requests."""
        outputs, self._outbox = self._outbox, {}
        for request_id in outputs:
            request = self._requests.get(request_id)
            if request is not None and request.unfinished == 0:
                del self._requests[request_id]
        self._publish(outputs)

    def _apply_inbox(self, *, block: bool) -> bool:
        """Apply queued commands (waiting for one if ``block``); False once asked to stop."""
        while True:
            try:
                command = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if isinstance(command, _Stop):
                return False
            if isinstance(command, _Call):
                command.fn()
            elif isinstance(command, str):
                self._abort(command)
            else:
                self._requests[command.request_id] = command
                self._accept(command)
