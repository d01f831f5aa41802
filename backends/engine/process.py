"""One engine process seen from the gateway: start it, talk to it, notice when it dies.

The process runs ``python -m lmgate.backends.engine.host --kind K --model NAME --fd N`` on one end of
a socket pair; this end is a ``multiprocessing.connection.Connection`` (length-prefixed pickle, from
the standard library: no dependency, and both ends are the same code). A reader thread blocks on the
connection and hands each message to the event loop, one wake-up per engine step; everything else
runs on the loop. When the connection ends the process is reaped, every request still waiting on
it gets ``BackendUnavailable`` saying how it died, and ``on_exit`` is told (unless it was asked to
stop). Restarting is the owner's policy (backends/engine/process_backend.py), not this class's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from lmgate.backends.engine import messages as msg
from lmgate.backends.engine.inbox import EngineInbox
from lmgate.backends.errors import BackendUnavailable
from lmgate.backends.types import BackendStats, GenerateRequest, TokenDelta

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ExitStatus:
    pid: int
    returncode: int
    reason: str | None = None
    """What the engine said before exiting (a ``Failed`` message), if anything."""
    in_flight: int = 0
    """Requests it was serving, each ended with an error."""

    @property
    def signal(self) -> str | None:
        """The signal that killed it (``SIGSEGV``, ``SIGKILL``…), or None for a plain exit."""
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"

    def describe(self) -> str:
        how = f"was killed by {self.signal}" if self.signal else f"exited with status {self.returncode}"
        return how + (f" ({self.reason})" if self.reason else "")


class EngineProcess:
    """Owned by the event loop that called ``start()``; not reusable after it ended."""

    def __init__(
        self, kind: str, name: str, config: Any, *, log_level: str, on_exit: Callable[[ExitStatus], None]
    ) -> None:
        self.kind = kind
        self.name = name
        self._config = config
        self._log_level = log_level
        self._on_exit = on_exit
        self._conn: Connection | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started: asyncio.Future[msg.Ready | msg.LoadFailed] | None = None
        self._inboxes: dict[str, EngineInbox] = {}
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._call_ids = itertools.count()
        self._failure: str | None = None
        self._stopping = False
        self.alive = False
        self.stats = BackendStats()

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    async def start(self) -> msg.Ready:
        """Spawn the process and load the model; raises the load's error (``ModelLoadError`` when
        retrying cannot help) or ``BackendUnavailable`` if the process died while loading."""
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.create_future()
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "lmgate.backends.engine.host", "--kind", self.kind, "--model", self.name,
                   "--fd", str(theirs.fileno()), "--log-level", self._log_level]  # fmt: skip
        with theirs:
            self._popen = subprocess.Popen(command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        self._conn = Connection(ours.detach())
        self.alive = True
        threading.Thread(target=self._read, name=f"lmgate-engine-reader-{self.name}", daemon=True).start()
        self._send(msg.Load(self.kind, self.name, self._config))
        outcome = await self._started
        if isinstance(outcome, msg.LoadFailed):
            await self.stop()
            raise outcome.exception()
        return outcome

    async def generate(self, request_id: str, request: GenerateRequest) -> AsyncGenerator[TokenDelta, None]:
        """Submit ``request`` under ``request_id`` (unique per process) and stream its deltas; leaving
        early aborts it in the engine."""
        if not self.alive:
            raise BackendUnavailable(f"the {self.kind} engine of {self.name!r} is not running")
        inbox = self._inboxes[request_id] = EngineInbox()
        try:
            self._send(msg.Submit(request_id, request))
            async for delta in inbox.stream(request.sampling.n, lambda: self._abort(request_id)):
                yield delta
        finally:
            self._inboxes.pop(request_id, None)

    def _abort(self, request_id: str) -> None:
        if self.alive:
            self._send(msg.Abort(request_id))

    async def call(self, method: msg.Method, *args: Any) -> Any:
        """A request-response with the engine process (tokenize, detokenize)."""
        if not self.alive or self._loop is None:
            raise BackendUnavailable(f"the {self.kind} engine of {self.name!r} is not running")
        call_id = next(self._call_ids)
        future = self._calls[call_id] = self._loop.create_future()
        try:
            self._send(msg.Call(call_id, method, args))
            return await future
        finally:
            self._calls.pop(call_id, None)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the process to stop (aborting what runs), kill it if it does not within ``timeout_s``."""
        self._stopping = True
        if self.alive:
            self._send(msg.Stop())
        if self._popen is not None:
            try:
                await asyncio.to_thread(self._popen.wait, timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "engine process %s of %r did not stop in %.0f s: killing it", self.pid, self.name, timeout_s
                )
                self._popen.kill()
                await asyncio.to_thread(self._popen.wait)

    def _send(self, message: msg.ToEngine) -> None:
        assert self._conn is not None
        # If it died, the reader thread sees the end of the connection and fails what waits.
        with contextlib.suppress(OSError):
            self._conn.send(message)

    # --- the reader thread ---

    def _read(self) -> None:
        assert self._conn is not None and self._popen is not None and self._loop is not None
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            if not self._to_loop(self._on_message, message):
                return
        returncode = self._popen.wait()
        self._conn.close()
        self._to_loop(self._on_exited, returncode)

    def _to_loop(self, callback: Callable[[Any], None], argument: Any) -> bool:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, argument)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    # --- the event loop ---

    def _on_message(self, message: msg.FromEngine) -> None:
        match message:
            case msg.Step(outputs, stats):
                self.stats = stats
                for request_id, deltas in outputs.items():
                    inbox = self._inboxes.get(request_id)
                    if inbox is not None:
                        inbox.put(deltas)
            case msg.Rejected(request_id, error):
                inbox = self._inboxes.get(request_id)
                if inbox is not None:
                    inbox.put(error.exception())
            case msg.Reply(call_id, value, error):
                future = self._calls.get(call_id)
                if future is not None and not future.done():
                    future.set_result(value) if error is None else future.set_exception(error.exception())
            case msg.Ready() | msg.LoadFailed():
                if self._started is not None and not self._started.done():
                    self._started.set_result(message)
            case msg.Failed(reason):
                self._failure = reason
                log.error("the %s engine of %r failed: %s", self.kind, self.name, reason)

    def _on_exited(self, returncode: int) -> None:
        assert self._popen is not None
        self.alive = False
        status = ExitStatus(self._popen.pid, returncode, self._failure, len(self._inboxes))
        error = BackendUnavailable(f"the {self.kind} engine of {self.name!r} {status.describe()}")
        inboxes, self._inboxes = self._inboxes, {}
        for inbox in inboxes.values():
            inbox.put(error)
        for future in self._calls.values():
            if not future.done():
                future.set_exception(error)
        if self._started is not None and not self._started.done():
            self._started.set_exception(error)
            return  # died while loading: start() raises, its caller decides
        if not self._stopping:
            self._on_exit(status)
