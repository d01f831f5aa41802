"""The backend contract (DESIGN §4): what the gateway needs from any engine or upstream."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator

from lmgate.backends.embedding import Embeddings, EmbedRequest
from lmgate.backends.errors import InvalidRequest
from lmgate.backends.tokenization import Tokenized, TokenizeRequest
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

    async def tokenize_request(self, request: TokenizeRequest) -> Tokenized:
        """The token ids ``request`` would be prompted with (HTTP ``/tokenize``).

        This default covers what ``tokenize`` can: a raw prompt. Chat messages (the model's template)
        and token strings (its vocabulary) need the model itself, which an upstream does not expose:
        they raise ``InvalidRequest`` naming the field. Backends that hold the model override this.
        """
        if request.messages is not None:
            raise InvalidRequest(
                f"model {self.info.name!r} is served by a `{self.info.backend}` backend, which cannot apply its chat "
                "template here: send `prompt` instead of `messages`",
                param="messages",
            )
        if request.token_strings:
            raise InvalidRequest(
                f"model {self.info.name!r} is served by a `{self.info.backend}` backend, which does not expose its "
                "vocabulary: send the request without `return_token_strs`",
                param="return_token_strs",
            )
        assert request.prompt is not None
        return Tokenized(tuple(await self.tokenize(request.prompt, add_special=request.add_special)))

    @abc.abstractmethod
    async def detokenize(self, token_ids: list[int]) -> str:
        """Text of ``token_ids``; raises ``InvalidRequest`` for an id outside the vocabulary."""

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """One unit-length vector per input, in order, and the prompt tokens read (``dimensions`` is the
        gateway's: full vectors here). Raises ``InvalidRequest`` naming ``input`` for an input this model
        cannot take (a token id outside the vocabulary, longer than the context). This default serves
        none: the backends that embed override it."""
        raise InvalidRequest(
            f"model {self.info.name!r} is served by a `{self.info.backend}` backend, which does not serve embeddings",
            param="model",
        )

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
