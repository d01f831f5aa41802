"""The backend contract (DESIGN §4): what the gateway needs from any engine or upstream."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator

from lmgate.backends.types import BackendStats, Capabilities, GenerateRequest, ModelInfo, TokenDelta


class Backend(abc.ABC):
    """One served model on one engine (or one upstream).

    All methods are called from the server's event loop. ``generate`` may be called concurrently
    for many requests; a backend that runs an engine on its own thread bridges to the loop itself.
    """

    @property
    @abc.abstractmethod
    def info(self) -> ModelInfo:
        """Name, backend kind and context length; valid after ``start()``."""

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """The sampling parameters and features this backend honours."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model and start the engine; returns when requests can be served."""

    @abc.abstractmethod
    def generate(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta, None]:
        """Stream the deltas of every choice until each has a finish reason.

        Raises ``InvalidRequest`` before the first delta for a request this model cannot serve
        (the prompt does not fit, a token id is out of range…). Closing the iterator early (the
        client went away, a deadline passed) is how a request is aborted: the backend stops it and
        frees what it held.
        """

    @abc.abstractmethod
    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """Token ids of ``text`` as ``generate`` would see it as a prompt."""

    @abc.abstractmethod
    async def detokenize(self, token_ids: list[int]) -> str:
        """Text of ``token_ids``; raises ``InvalidRequest`` for an id outside the vocabulary."""

    @abc.abstractmethod
    def stats(self) -> BackendStats:
        """A snapshot of the engine's state; cheap, callable at any time."""

    @abc.abstractmethod
    def healthy(self) -> bool:
        """False once the engine has failed and cannot serve."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Abort what is still running and free everything. (Draining in-flight requests is the
        server's job, before this: server/placement/drain.py.)"""
