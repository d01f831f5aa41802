"""The ``transformers`` backend: HF checkpoints (FP32/FP16/BF16, GPTQ, AWQ) served on CPU.

The path for quantized HF models where there is no GPU (DESIGN §6): transformers loads the
checkpoint (GPTQModel's CPU kernels for GPTQ and AWQ), lmgate's own loop batches the requests
(backends/transformers/engine.py) and samples with the same parameters as the other engines.
torch and transformers are imported in ``start()`` only. Beam search runs the same policy as the
llama.cpp engine's (backends/beam_search.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from lmgate.backends.engine_backend import EngineBackend
from lmgate.backends.engine_inbox import EngineInbox
from lmgate.backends.errors import BackendUnavailable
from lmgate.backends.hf_prompt import HfPrompt
from lmgate.backends.limits import check_sampling, output_budget
from lmgate.backends.transformers.config import TransformersConfig
from lmgate.backends.types import (
    BEAM_SEARCH_PARAMS,
    STANDARD_SAMPLING_PARAMS,
    Capabilities,
    GenerateRequest,
    ModelInfo,
    TokenDelta,
)

if TYPE_CHECKING:
    from lmgate.backends.transformers.engine import Engine


class TransformersBackend(EngineBackend):
    def __init__(self, name: str, config: TransformersConfig) -> None:
        self._name = name
        self._config = config
        self._engine: Engine | None = None
        self._prompt: HfPrompt | None = None

    @property
    def info(self) -> ModelInfo:
        engine = self._loaded()
        return ModelInfo(self._name, "transformers", engine.model.max_model_len, engine.model.quantization)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(STANDARD_SAMPLING_PARAMS | BEAM_SEARCH_PARAMS, max_n=self._config.max_seqs)

    async def start(self) -> None:
        from lmgate.backends.transformers.engine import Engine
        from lmgate.backends.transformers.hf_model import HfModel

        model = await asyncio.to_thread(HfModel, self._config)
        try:
            engine = Engine(model, self._config.max_seqs)
        except ValueError as exc:
            raise BackendUnavailable(f"cannot serve {self._config.model}: {exc}") from exc
        self._prompt = HfPrompt(model.tokenizer)
        self._engine = engine
        engine.start()

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenDelta]:
        from lmgate.backends.transformers.rows import Request

        engine = self._serving()
        assert self._prompt is not None
        prompt = self._prompt.ids(request)
        max_tokens = output_budget(request, len(prompt), engine.model.max_model_len)
        check_sampling(request.sampling, max_seqs=self._config.max_seqs, n_vocab=self._prompt.n_vocab)
        inbox = EngineInbox()
        internal_id = f"{request.request_id}/{uuid.uuid4().hex[:8]}"
        engine.add(Request(internal_id, prompt, request.sampling, max_tokens, inbox.sink))
        stream = inbox.stream(request.sampling.n, lambda: engine.abort(internal_id),
                              f"the transformers engine of {self._name!r}")  # fmt: skip
        async with contextlib.aclosing(stream):
            async for delta in stream:
                yield delta

    def _loaded(self) -> Engine:
        if self._engine is None:
            raise BackendUnavailable(f"model {self._name!r} is not loaded")
        return self._engine

    def _serving(self) -> Engine:
        if self._engine is None or not self.healthy():
            raise BackendUnavailable(f"model {self._name!r} is not serving")
        return self._engine

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        self._loaded()
        assert self._prompt is not None
        return self._prompt.tokenize(text, add_special=add_special)

    async def detokenize(self, token_ids: list[int]) -> str:
        self._loaded()
        assert self._prompt is not None
        return self._prompt.detokenize(token_ids)
