"""An engine process: one model's engine, away from the gateway (DESIGN §1, STYLE 14).

    python -m lmgate.backends.engine.host --kind llamacpp --model tiny-chat --fd 5

The gateway (backends/engine/process.py) starts it with one end of a socket pair as ``--fd``; the
model's name is on the command line so ``ps`` shows which process serves which model. A crash here
(a segfault or an abort in llama.cpp, an OOM kill) ends this process only: the gateway fails its
requests and restarts it.

Two threads: the command thread (main) reads the gateway's messages, turns a ``Submit`` into engine
requests (chat template, tokenizer, checks against the model: a ``Rejected`` if they fail) and
answers ``Call``s; the engine thread steps and sends one ``Step`` message per step. The process
exits when told to ``Stop``, when the gateway goes away (end of file), or after sending ``Failed``
when the engine breaks.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol, cast

from lmgate.backends.embedding import Embeddings, EmbedRequest
from lmgate.backends.engine import messages as msg
from lmgate.backends.engine.thread import EngineThread, StepOutputs
from lmgate.backends.errors import BackendError, ModelLoadError
from lmgate.backends.tokenization import Tokenized, TokenizeRequest
from lmgate.backends.types import BackendStats, Capabilities, GenerateRequest, ModelInfo

log = logging.getLogger("lmgate.engine_host")

FAILED_EXIT_CODE = 70  # EX_SOFTWARE: the engine broke and said why


class Host(Protocol):
    """One kind's model and engine inside the engine process (backends/<kind>/host.py).

    Built as ``Host(name, config, publish, on_failure)``: loads the model (raising ``ModelLoadError``
    when it cannot) and builds its engine, not started. ``submit`` runs on the command thread.
    """

    info: ModelInfo
    capabilities: Capabilities
    engine: EngineThread[Any]

    def submit(self, request_id: str, request: GenerateRequest) -> None:
        """Queue ``request`` on the engine; raises ``InvalidRequest`` if this model cannot serve it."""

    def tokenize(self, text: str, add_special: bool) -> list[int]: ...

    def tokenize_request(self, request: TokenizeRequest) -> Tokenized: ...

    def detokenize(self, token_ids: list[int]) -> str: ...

    def embed(self, request: EmbedRequest, reply: Callable[[Embeddings | BaseException], None]) -> None:
        """Check ``request`` against the model (raising ``InvalidRequest``) and queue it; ``reply`` is
        called later, on the engine thread, with its embeddings or the error that ended it."""

    def close(self) -> None:
        """Stop the engine (aborting what runs) and free the model."""


HOSTS = {
    "llamacpp": "lmgate.backends.llamacpp.host:LlamaCppHost",
    "transformers": "lmgate.backends.transformers.host:TransformersHost",
}


class EngineHost:
    """The engine process's side of the connection. Sends are serialised: two threads send."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self._host: Host | None = None
        self._last_stats: BackendStats | None = None

    def send(self, message: msg.FromEngine) -> None:
        """Send to the gateway; nothing happens if it is gone (the command thread sees the end and exits)."""
        with self._send_lock, contextlib.suppress(OSError):
            self._conn.send(message)

    def receive_load(self) -> msg.Load | None:
        """The gateway's first message; None if it went away before sending it."""
        try:
            return cast(msg.Load, self._conn.recv())  # Connection.recv is untyped; Load is the gateway's first message
        except (EOFError, OSError):
            return None

    def load(self, load: msg.Load) -> bool:
        """Build the kind's host and start its engine; tell the gateway how it went."""
        module_name, _, class_name = HOSTS[load.kind].partition(":")
        try:
            host_class = getattr(importlib.import_module(module_name), class_name)
            self._host = host_class(load.name, load.config, self._publish, self._engine_failed)
        except ModelLoadError as exc:
            self.send(msg.LoadFailed(str(exc), permanent=True))
            return False
        except Exception as exc:
            log.exception("loading %s failed", load.name)
            self.send(msg.LoadFailed(f"{type(exc).__name__}: {exc}", permanent=False))
            return False
        self._host.engine.start()
        self.send(msg.Ready(self._host.info, self._host.capabilities))
        return True

    def _publish(self, outputs: StepOutputs) -> None:
        assert self._host is not None
        stats = self._host.engine.stats()
        if outputs or stats != self._last_stats:
            self._last_stats = stats
            self.send(msg.Step(outputs, stats))

    def _engine_failed(self, exc: BaseException) -> None:
        """On the engine thread: say why, then end the process (the gateway restarts it)."""
        try:
            self.send(msg.Failed(f"{type(exc).__name__}: {exc}"))
        finally:
            logging.shutdown()
            os._exit(FAILED_EXIT_CODE)

    def serve(self) -> None:
        """Apply the gateway's messages until ``Stop`` or the end of the connection."""
        assert self._host is not None
        host = self._host
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                return  # the gateway is gone
            match message:
                case msg.Submit(request_id, request):
                    try:
                        host.submit(request_id, request)
                    except Exception as exc:  # a bug here must cost one request, not the engine
                        self._log_unexpected(exc)
                        self.send(msg.Rejected(request_id, msg.ErrorInfo.of(exc)))
                case msg.Abort(request_id):
                    host.engine.abort(request_id)
                case msg.Call(call_id, msg.Method.EMBED, (request,)):
                    self._embed(call_id, request)
                case msg.Call(call_id, method, args):
                    self.send(self._answer(call_id, method, args))
                case msg.Stop():
                    return

    def _answer(self, call_id: int, method: msg.Method, args: tuple[Any, ...]) -> msg.Reply:
        assert self._host is not None
        try:
            if method is msg.Method.TOKENIZE:
                return msg.Reply(call_id, self._host.tokenize(*args))
            if method is msg.Method.TOKENIZE_REQUEST:
                return msg.Reply(call_id, self._host.tokenize_request(*args))
            return msg.Reply(call_id, self._host.detokenize(*args))
        except Exception as exc:
            self._log_unexpected(exc)
            return msg.Reply(call_id, error=msg.ErrorInfo.of(exc))

    def _embed(self, call_id: int, request: EmbedRequest) -> None:
        """Queue an embedding request; its reply is sent when the engine has computed it."""
        assert self._host is not None

        def reply(result: Embeddings | BaseException) -> None:
            if isinstance(result, BaseException):
                self.send(msg.Reply(call_id, error=msg.ErrorInfo.of(result)))
            else:
                self.send(msg.Reply(call_id, result))

        try:
            self._host.embed(request, reply)
        except Exception as exc:
            self._log_unexpected(exc)
            self.send(msg.Reply(call_id, error=msg.ErrorInfo.of(exc)))

    @staticmethod
    def _log_unexpected(exc: Exception) -> None:
        if not isinstance(exc, BackendError):
            log.exception("unexpected error preparing a request", exc_info=exc)

    def close(self) -> None:
        if self._host is not None:
            self._host.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An lmgate engine process (started by the gateway).")
    parser.add_argument("--kind", required=True, choices=sorted(HOSTS))
    parser.add_argument("--model", required=True, help="the served model's name (for ps and logs)")
    parser.add_argument("--fd", type=int, required=True, help="this end of the gateway's socket pair")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group: the gateway drains, then stops its engines itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s engine[{args.model}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    host = EngineHost(Connection(args.fd))
    load = host.receive_load()
    if load is not None and host.load(load):
        try:
            host.serve()
        finally:
            host.close()


if __name__ == "__main__":
    main()
