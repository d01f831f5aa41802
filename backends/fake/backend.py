"""A backend with no model, for testing the gateway's own logic next to the real engines.

It "tokenizes" on whitespace (token id = index in a growing word list) and answers by echoing the
prompt's words back in order, one word per token, until ``max_tokens`` (default 16) or the words
run out. Stop strings and n are honoured, so transports can be tested exactly. Its embeddings are
seeded random unit vectors, one per distinct input.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator

import numpy as np

from lmgate.backends.base import Backend
from lmgate.backends.embedding import Embeddings, EmbedRequest, normalized
from lmgate.backends.engine.limits import check_token_ids
from lmgate.backends.errors import InvalidRequest
from lmgate.backends.fake.config import FakeConfig
from lmgate.backends.types import (
    BackendStats,
    Capabilities,
    FinishReason,
    GenerateRequest,
    ModelInfo,
    TokenDelta,
    Usage,
)


class FakeBackend(Backend):
    def __init__(self, name: str, config: FakeConfig) -> None:
        self._name = name
        self._config = config
        self._words: list[str] = []
        self._open = 0
        self._stopping = asyncio.Event()

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self._name, "fake", self._config.context_length, embedding_size=self._config.embedding_size)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(frozenset({"max_tokens", "stop", "n", "seed", "temperature"}), max_n=self._config.max_n)

    async def start(self) -> None:
        self._stopping.clear()  # loaded again after an unload

    def _ids(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            if word not in self._words:
                self._words.append(word)
            ids.append(self._words.index(word))
        return ids

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta, None]:
        if request.messages is not None:
            text = " ".join(m.content for m in request.messages)
        elif request.prompt is not None:
            text = request.prompt
        else:
            check_token_ids(request.prompt_token_ids or (), len(self._words), "prompt")
            text = " ".join(self._words[t] for t in request.prompt_token_ids or ())
        prompt = self._ids(text)
        limit = request.sampling.max_tokens or 16
        if len(prompt) + limit > self._config.context_length:
            raise InvalidRequest(
                "prompt + max_tokens exceed the context", param="max_tokens", code="context_length_exceeded"
            )
        self._open += 1
        try:
            for index in range(request.sampling.n):
                async for delta in self._choice(index, prompt, limit, request.sampling.stop):
                    yield delta
        finally:
            self._open -= 1

    async def _choice(
        self, index: int, prompt: list[int], limit: int, stop: tuple[str, ...]
    ) -> AsyncIterator[TokenDelta]:
        produced = 0
        for produced, token in enumerate(prompt[:limit], start=1):
            if self._config.stall_after is not None and produced > self._config.stall_after:
                await self._stopping.wait()  # hung until the stream is closed or the backend stops
            await asyncio.sleep(self._config.token_delay_s)
            word = self._words[token]
            if self._stopping.is_set():
                yield TokenDelta(index, "", finish_reason=FinishReason.ABORT, usage=Usage(len(prompt), produced - 1))
                return
            if word in stop:
                yield TokenDelta(
                    index, "", (token,), finish_reason=FinishReason.STOP, usage=Usage(len(prompt), produced)
                )
                return
            yield TokenDelta(index, (" " if produced > 1 else "") + word, (token,))
        reason = FinishReason.LENGTH if produced == limit else FinishReason.STOP
        yield TokenDelta(index, "", finish_reason=reason, usage=Usage(len(prompt), produced))

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return self._ids(text)

    async def detokenize(self, token_ids: list[int]) -> str:
        check_token_ids(token_ids, len(self._words), "tokens")
        return " ".join(self._words[t] for t in token_ids)

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """A vector of ``embedding_size`` per input, from a hash of its words (equal inputs, equal vectors)."""
        vectors, tokens = [], 0
        for item in request.inputs:
            ids = self._ids(item) if isinstance(item, str) else list(item)
            tokens += len(ids)
            seed = int.from_bytes(hashlib.sha256(repr(ids).encode()).digest()[:8], "little")
            vectors.append(normalized(np.random.default_rng(seed).standard_normal(self._config.embedding_size)))
        return Embeddings(tuple(vectors), tokens)

    def stats(self) -> BackendStats:
        return BackendStats(running=self._open)

    def healthy(self) -> bool:
        return True

    async def shutdown(self) -> None:
        self._stopping.set()
