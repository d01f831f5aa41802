"""The ``transformers`` kind inside its engine process: HF checkpoints (FP32/FP16/BF16, GPTQ, AWQ) on CPU.

The path for quantized HF models where there is no GPU (DESIGN §6): transformers loads the
checkpoint (GPTQModel's CPU kernels for GPTQ and AWQ), lmgate's own loop batches the requests
(backends/transformers/engine.py) and samples with the same parameters as the other engines.
Beam search runs the same policy as the llama.cpp engine's (backends/engine/beam_search.py). The gateway
side is backends/engine/process_backend.py; torch is only ever imported in the engine process.
"""

from __future__ import annotations

from collections.abc import Callable

import llguidance.hf

from lmgate.backends.embedding import Embeddings, EmbedRequest
from lmgate.backends.engine.limits import check_sampling, output_budget
from lmgate.backends.engine.thread import Publish
from lmgate.backends.errors import InvalidRequest, ModelLoadError
from lmgate.backends.hf_prompt import HfPrompt
from lmgate.backends.structured_output import Matchers
from lmgate.backends.tokenization import Tokenized, TokenizeRequest
from lmgate.backends.tools import formats
from lmgate.backends.transformers.config import TransformersConfig
from lmgate.backends.transformers.engine import Engine
from lmgate.backends.transformers.hf_model import HfModel
from lmgate.backends.transformers.rows import Request
from lmgate.backends.types import (
    BEAM_SEARCH_PARAMS,
    STANDARD_SAMPLING_PARAMS,
    Capabilities,
    GenerateRequest,
    ModelInfo,
)


class TransformersHost:
    """A loaded HF checkpoint and its engine (not started); see ``engine_host.Host``."""

    def __init__(
        self, name: str, config: TransformersConfig, publish: Publish, on_failure: Callable[[BaseException], None]
    ) -> None:
        self._config = config
        model = HfModel(config)
        try:
            self.engine = Engine(model, config.max_seqs, publish, on_failure)
        except ValueError as exc:
            raise ModelLoadError(f"cannot serve {config.model}: {exc}") from exc
        self._prompt = HfPrompt(model.tokenizer)
        fmt = formats.resolve(config.tool_parser, getattr(model.tokenizer, "chat_template", None))
        self.info = ModelInfo(
            name, "transformers", model.max_model_len, model.quantization, tool_format=fmt and fmt.value
        )
        params = STANDARD_SAMPLING_PARAMS | BEAM_SEARCH_PARAMS | {"structured_output"}
        self.capabilities = Capabilities(params, max_n=config.max_seqs, tools=fmt is not None)
        self._matchers = Matchers(lambda: llguidance.hf.from_tokenizer(
            model.tokenizer, n_vocab=model.n_vocab, eos_token=sorted(model.eos_ids)))  # fmt: skip

    def submit(self, request_id: str, request: GenerateRequest) -> None:
        prompt = self._prompt.ids(request)
        max_tokens = output_budget(request, len(prompt), self.engine.model.max_model_len)
        check_sampling(request.sampling, max_seqs=self._config.max_seqs, n_vocab=self._prompt.n_vocab)
        structured = request.sampling.structured_output
        # Compiled here, on the engine process's command thread, never in a step of the engine's.
        matchers = [self._matchers.matcher(structured) for _ in range(request.sampling.n)] if structured else []
        self.engine.add(Request(request_id, prompt, request.sampling, max_tokens, matchers=matchers))

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return self._prompt.tokenize(text, add_special=add_special)

    def tokenize_request(self, request: TokenizeRequest) -> Tokenized:
        return self._prompt.tokenized(request)

    def detokenize(self, token_ids: list[int]) -> str:
        return self._prompt.detokenize(token_ids)

    def embed(self, request: EmbedRequest, reply: Callable[[Embeddings | BaseException], None]) -> None:
        """Not served (``TransformersConfig.tasks``): the gateway refuses before this; here for the contract."""
        raise InvalidRequest(f"model {self.info.name!r} (transformers) does not serve embeddings", param="model")

    def close(self) -> None:
        self.engine.stop()
