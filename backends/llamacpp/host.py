"""The ``llamacpp`` backend: a GGUF model on lmgate's continuous-batching CPU engine.

Turns a ``GenerateRequest`` into token ids (rendering chat messages with the model's template),
checks it against the model (context length, vocabulary), hands one sequence per choice to the
engine thread and streams the deltas back on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator

from lmgate.backends.chat_template import ChatTemplate
from lmgate.backends.engine_backend import EngineBackend
from lmgate.backends.engine_inbox import EngineInbox
from lmgate.backends.errors import BackendUnavailable, InvalidRequest
from lmgate.backends.limits import check_sampling, check_token_ids, output_budget
from lmgate.backends.llamacpp.config import LlamaCppConfig
from lmgate.backends.llamacpp.engine import Engine, Request
from lmgate.backends.llamacpp.llama_model import LlamaModel
from lmgate.backends.llamacpp.sequence import Sequence
from lmgate.backends.output_text import OutputText
from lmgate.backends.types import (
    BEAM_SEARCH_PARAMS,
    STANDARD_SAMPLING_PARAMS,
    Capabilities,
    GenerateRequest,
    ModelInfo,
    TokenDelta,
)

SAMPLING_PARAMS = STANDARD_SAMPLING_PARAMS | BEAM_SEARCH_PARAMS


class LlamaCppBackend(EngineBackend):
    def __init__(self, name: str, config: LlamaCppConfig) -> None:
        self._name = name
        self._config = config
        self._engine: Engine | None = None
        self._template: ChatTemplate | None = None
        self._arrivals = itertools.count()

    @property
    def info(self) -> ModelInfo:
        model = self._model
        return ModelInfo(self._name, "llamacpp", model.max_model_len, model.quantization)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(SAMPLING_PARAMS, max_n=self._config.max_seqs)

    @property
    def _model(self) -> LlamaModel:
        if self._engine is None:
            raise BackendUnavailable(f"model {self._name!r} is not loaded")
        return self._engine.model

    async def start(self) -> None:
        model = await asyncio.to_thread(LlamaModel, self._config)
        self._template = ChatTemplate(model.chat_template, bos_token=model.bos_text, eos_token=model.eos_text)
        self._engine = Engine(model, self._config)
        self._engine.start()

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenDelta]:
        engine = self._running_engine()
        prompt = self._prompt_ids(request)
        max_tokens = output_budget(request, len(prompt), self._model.max_model_len)
        check_sampling(request.sampling, max_seqs=self._config.max_seqs, n_vocab=self._model.n_vocab)

        internal_id = f"{request.request_id}/{uuid.uuid4().hex[:8]}"
        arrival = next(self._arrivals)
        # A beam search starts from one sequence and forks its beams; sampling runs one per choice.
        count = 1 if request.sampling.use_beam_search else request.sampling.n
        seqs = [
            Sequence(
                internal_id, i, list(prompt), request.sampling, max_tokens, arrival, OutputText(request.sampling.stop)
            )
            for i in range(count)
        ]
        inbox = EngineInbox()
        engine.add(Request(internal_id, inbox.sink, seqs))
        stream = inbox.stream(
            request.sampling.n, lambda: engine.abort(internal_id), f"the llama.cpp engine of {self._name!r}"
        )
        async with contextlib.aclosing(stream):
            async for delta in stream:
                yield delta

    def _running_engine(self) -> Engine:
        if self._engine is None or not self.healthy():
            raise BackendUnavailable(f"model {self._name!r} is not serving")
        return self._engine

    def _prompt_ids(self, request: GenerateRequest) -> list[int]:
        model = self._model
        if request.prompt_token_ids is not None:
            ids = list(request.prompt_token_ids)
            check_token_ids(ids, model.n_vocab, "prompt")
        elif request.messages is not None:
            assert self._template is not None
            text = self._template.render(request.messages)
            # A template that writes BOS itself must not get a second one from the tokenizer.
            add_special = not (model.add_bos and model.bos_text and text.startswith(model.bos_text))
            ids = model.tokenize(text, add_special=add_special, parse_special=True)
        else:
            assert request.prompt is not None
            ids = model.tokenize(request.prompt, add_special=True, parse_special=True)
        if not ids:
            raise InvalidRequest("the prompt is empty", param="prompt" if request.messages is None else "messages")
        return ids

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return self._model.tokenize(text, add_special=add_special, parse_special=True)

    async def detokenize(self, token_ids: list[int]) -> str:
        check_token_ids(token_ids, self._model.n_vocab, "tokens")
        return self._model.detokenize(token_ids)
