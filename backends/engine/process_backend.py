"""The backend of the in-process-engine kinds (``llamacpp``, ``transformers``): a supervised engine process.

The gateway keeps HTTP, gRPC, routing and metrics; the model, its scheduler and its step loop live in
a child process (backends/engine/host.py), as vLLM V1 runs its EngineCore and Ollama its runners.
When that process dies (a segfault or an abort in native code, an OOM kill, an engine bug) its
requests end at once with ``BackendUnavailable`` (503 / an SSE error event / gRPC UNAVAILABLE), the
backend reports itself unhealthy (so /ready and gRPC health say NOT_SERVING for the model and the
router skips it), and a new process is started after a backoff (backends/backoff.py) until one
loads; other models, in their own processes, never notice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Any, cast

from lmgate.backends.backoff import Backoff
from lmgate.backends.base import Backend
from lmgate.backends.embedding import Embeddings, EmbedRequest
from lmgate.backends.engine import messages as msg
from lmgate.backends.engine.process import EngineProcess, ExitStatus
from lmgate.backends.errors import BackendUnavailable
from lmgate.backends.tokenization import Tokenized, TokenizeRequest
from lmgate.backends.tools.formats import ToolFormat
from lmgate.backends.tools.stream import tool_calls
from lmgate.backends.types import BackendStats, Capabilities, GenerateRequest, ModelInfo, TokenDelta

log = logging.getLogger("lmgate.engine")


class ProcessBackend(Backend):
    """``config.backend`` names the kind its engine process hosts (engine_host.HOSTS)."""

    def __init__(self, name: str, config: Any, *, backoff: Backoff | None = None) -> None:
        self._name = name
        self._config = config
        self._kind: str = config.backend
        self._backoff = backoff or Backoff()
        self._process: EngineProcess | None = None
        self._ready: msg.Ready | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def info(self) -> ModelInfo:
        return self._started().info

    @property
    def capabilities(self) -> Capabilities:
        return self._started().capabilities

    def _started(self) -> msg.Ready:
        if self._ready is None:
            raise BackendUnavailable(f"model {self._name!r} is not loaded")
        return self._ready

    @property
    def pid(self) -> int | None:
        """The engine process's pid while one runs."""
        return self._process.pid if self._process is not None and self._process.alive else None

    async def start(self) -> None:
        self._stopping = False
        self._process = await self._spawn()

    async def _spawn(self) -> EngineProcess:
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        process = EngineProcess(self._kind, self._name, self._config, log_level=level, on_exit=self._on_exit)
        self._ready = await process.start()
        self._backoff.succeeded(time.monotonic())
        return process

    def _on_exit(self, status: ExitStatus) -> None:
        """The engine process died on its own (on the event loop): restart it after a backoff."""
        delay = self._backoff.failed(time.monotonic())
        log.error(json.dumps({
            "event": "engine_exit", "model": self._name, "backend": self._kind, "pid": status.pid,
            "signal": status.signal, "exit_code": None if status.signal else status.returncode,
            "reason": status.reason, "requests_failed": status.in_flight, "restart_in_s": delay,
        }))  # fmt: skip
        if not self._stopping:
            self._restarting = asyncio.ensure_future(self._restart(delay))

    async def _restart(self, delay: float) -> None:
        while not self._stopping:
            await asyncio.sleep(delay)
            try:
                process = await self._spawn()
            except Exception as exc:  # a load that failed, or a process that could not start: try again
                delay = self._backoff.failed(time.monotonic())
                log.error(
                    "model %s: the restarted engine did not load (%s); next try in %.1f s", self._name, exc, delay
                )
                continue
            if self._stopping:
                await process.stop()
                return
            self._process = process
            self.restarts += 1
            log.info("model %s: engine restarted (pid %s, restart %d)", self._name, process.pid, self.restarts)
            return

    def generate(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta, None]:
        """The engine's deltas, with function calls parsed out of the text (backends/tools/stream.py)."""
        tokens = dict(self._ready.info.tool_tokens) if self._ready is not None else None
        return tool_calls(request, self._tool_format, self._generate, tokens)

    @property
    def _tool_format(self) -> ToolFormat | None:
        """The engine's call format (None before it loaded: generation then says why)."""
        fmt = self._ready.info.tool_format if self._ready is not None else None
        return ToolFormat(fmt) if fmt else None

    async def _generate(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta, None]:
        process = self._serving()
        internal_id = f"{request.request_id}/{uuid.uuid4().hex[:8]}"
        async for delta in process.generate(internal_id, request):
            yield delta

    def _serving(self) -> EngineProcess:
        if self._process is None or not self._process.alive:
            state = (
                "restarting after its engine died"
                if self._restarting and not self._restarting.done()
                else "not serving"
            )
            raise BackendUnavailable(f"model {self._name!r} is {state}")
        return self._process

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        # call() answers with what the engine's method returned (host.py: Host.tokenize, Host.detokenize).
        return cast(list[int], await self._serving().call(msg.Method.TOKENIZE, text, add_special))

    async def tokenize_request(self, request: TokenizeRequest) -> Tokenized:
        return cast(Tokenized, await self._serving().call(msg.Method.TOKENIZE_REQUEST, request))

    async def detokenize(self, token_ids: list[int]) -> str:
        return cast(str, await self._serving().call(msg.Method.DETOKENIZE, list(token_ids)))

    async def embed(self, request: EmbedRequest) -> Embeddings:
        # A client that leaves cancels the wait, not the batch: the engine finishes it (bounded work).
        return cast(Embeddings, await self._serving().call(msg.Method.EMBED, request))

    def stats(self) -> BackendStats:
        base = self._process.stats if self._process is not None and self._process.alive else BackendStats()
        return replace(base, engine_restarts=self.restarts)

    def healthy(self) -> bool:
        return self._process is not None and self._process.alive

    async def shutdown(self) -> None:
        self._stopping = True
        if self._restarting is not None:
            self._restarting.cancel()
            await asyncio.gather(self._restarting, return_exceptions=True)
            self._restarting = None
        if self._process is not None:
            process, self._process = self._process, None
            await process.stop()
