"""The ``vllm`` backend: vLLM's in-process ``AsyncLLM`` (v1 engine) behind lmgate's contract.

vLLM is imported in ``start()`` only, so a CPU deployment never imports it. Chat messages are
rendered with the checkpoint's template and tokenized here with the same BOS rule as the llama.cpp
backend (a template that writes BOS itself gets none added), so both engines see the same tokens.
Sampling parameters map 1:1 onto vLLM's, outputs stream as deltas (``RequestOutputKind.DELTA``),
and a closed stream aborts the request. vLLM's scheduler stats (running, waiting, KV usage,
prefix-cache hits, preemptions) arrive through a stat logger and come out of ``stats()``.
Beam search lives in vLLM's serving layer, not in AsyncLLM; here it runs lmgate's shared policy
(backends/engine/beam_search.py) the way vLLM's server does: each step asks the engine for one token
with the top 2 × width log-probabilities of every live beam (vLLM's prefix cache makes the
repeated prompts cheap), and the policy picks the continuations.
LoRA adapters are vLLM's multi-LoRA: a request naming an adapter carries its ``LoRARequest``, and
vLLM batches requests of different adapters together (up to ``max_loras`` adapters a batch).
A model entry with ``tasks: [embed]`` runs vLLM's pooling runner instead (``runner="pooling"``,
``convert="embed"``): ``embed`` sends each input through ``AsyncLLM.encode``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lmgate.backends.base import Backend
from lmgate.backends.embedding import Embeddings, EmbedRequest, normalized
from lmgate.backends.engine.beam_search import BeamSearch, final_deltas
from lmgate.backends.engine.limits import check_token_ids, output_budget
from lmgate.backends.errors import BackendUnavailable, InvalidRequest
from lmgate.backends.hf_prompt import HfPrompt
from lmgate.backends.tasks import Task
from lmgate.backends.tokenization import Tokenized, TokenizeRequest
from lmgate.backends.tools import formats
from lmgate.backends.tools.formats import ToolFormat
from lmgate.backends.tools.stream import tool_calls
from lmgate.backends.types import (
    BEAM_SEARCH_PARAMS,
    STANDARD_SAMPLING_PARAMS,
    BackendStats,
    Capabilities,
    FinishReason,
    GenerateRequest,
    ModelInfo,
    SamplingParams,
    StructuredOutput,
    StructureKind,
    TokenDelta,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from lmgate.backends.vllm.config import VllmConfig

SAMPLING_PARAMS = STANDARD_SAMPLING_PARAMS | BEAM_SEARCH_PARAMS | {"structured_output"}


@dataclass
class _Stats:
    """Filled by vLLM's engine through ``_StatLogger``; read by ``stats()``."""

    snapshot: BackendStats = field(default_factory=BackendStats)

    def record(self, scheduler: Any, iteration: Any, total_cells: int) -> None:
        s = self.snapshot
        if scheduler is not None:
            prefix = scheduler.prefix_cache_stats
            s = replace(
                s,
                running=scheduler.num_running_reqs,
                waiting=scheduler.num_waiting_reqs,
                kv_cells_used=round(scheduler.kv_cache_usage * total_cells),
                kv_cells_total=total_cells,
                prefix_queries=s.prefix_queries + prefix.queries,
                prefix_hits=s.prefix_hits + prefix.hits,
            )
        if iteration is not None:
            s = replace(s, preemptions=s.preemptions + iteration.num_preempted_reqs, steps=s.steps + 1,
                        generated_tokens=s.generated_tokens + iteration.num_generation_tokens)  # fmt: skip
        self.snapshot = s


class VllmBackend(Backend):
    def __init__(self, name: str, config: VllmConfig) -> None:
        self._name = name
        self._config = config
        self._engine: Any = None
        self._prompt: HfPrompt | None = None
        self._max_model_len = 0
        self._embedding_size: int | None = None
        self._stats = _Stats()
        self._ids = itertools.count()
        self._tool_format: ToolFormat | None = None
        self._loras: dict[str, Any] = {}
        """Each adapter's ``LoRARequest`` by name (vLLM keys its KV and its adapter cache on the int id)."""

    @property
    def info(self) -> ModelInfo:
        if self._engine is None:
            raise BackendUnavailable(f"model {self._name!r} is not loaded")
        fmt = self._tool_format and self._tool_format.value
        return ModelInfo(
            self._name, "vllm", self._max_model_len, self._config.quantization, tool_format=fmt,
            embedding_size=self._embedding_size,
        )  # fmt: skip

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(SAMPLING_PARAMS, max_n=256, tools=self._tool_format is not None)

    async def start(self) -> None:
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        c = self._config
        optional = {
            "tokenizer": c.tokenizer, "max_model_len": c.max_model_len,
            "gpu_memory_utilization": c.gpu_memory_utilization, "kv_cache_memory_bytes": c.kv_cache_memory_bytes,
            "quantization": c.quantization, "max_num_seqs": c.max_num_seqs, "seed": c.seed,
            "hf_overrides": c.hf_overrides, "max_loras": c.max_loras, "max_lora_rank": c.max_lora_rank,
        }  # fmt: skip
        if c.lora_adapters:
            optional["enable_lora"] = True
        if c.serves(Task.EMBED):
            # The pooling runner; a generative checkpoint is converted to an embedding model, pooled as
            # vLLM pools it (its Sentence Transformers config, else the last token), normalised.
            optional |= {"runner": "pooling", "convert": "embed"}
        args = AsyncEngineArgs(
            model=c.model,
            dtype=c.dtype,
            tensor_parallel_size=c.tensor_parallel_size,
            enable_prefix_caching=c.enable_prefix_caching,
            kv_cache_dtype=c.kv_cache_dtype,
            enforce_eager=c.enforce_eager,
            load_format=c.load_format,
            # llguidance, as on the llama.cpp engine, and JSON on one line as it writes it (vLLM reads the
            # whitespace rule per engine, not per request).
            structured_outputs_config=StructuredOutputsConfig(backend="guidance", disable_any_whitespace=True),
            **{k: v for k, v in optional.items() if v is not None},
        )
        try:
            self._engine = AsyncLLM.from_engine_args(args, stat_loggers=[_logger_factory(self._stats)])
        except Exception as exc:  # vLLM raises many kinds; the pool only needs to know it failed
            raise BackendUnavailable(f"vLLM could not start {c.model}: {exc}") from exc
        self._prompt = HfPrompt(self._engine.get_tokenizer())
        self._tool_format = formats.resolve(c.tool_parser, getattr(self._engine.get_tokenizer(), "chat_template", None))
        self._max_model_len = self._engine.model_config.max_model_len
        self._loras = _lora_requests(c)
        if c.serves(Task.EMBED):
            self._embedding_size = self._engine.model_config.get_hidden_size()

    def generate(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta, None]:
        """The engine's deltas, with function calls parsed out of the text (backends/tools/stream.py)."""
        return tool_calls(request, self._tool_format, self._generate)

    async def _generate(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta, None]:
        engine = self._require_engine()
        # Rendering and tokenizing run off the event loop (HF's Rust tokenizer releases the GIL): a
        # long prompt must not stall every other request's stream.
        prompt = await asyncio.to_thread(self._require_prompt().ids, request)
        if request.sampling.use_beam_search:
            if request.sampling.structured_output is not None:
                raise InvalidRequest("structured outputs are not decoded with beam search", param="use_beam_search")
            for delta in await self._beam_search(engine, request, prompt):
                yield delta
            return
        params = self._sampling(request, len(prompt))
        internal = f"{request.request_id}-{next(self._ids)}"
        counts: dict[int, int] = {}
        unfinished = request.sampling.n
        try:
            lora = self._lora(request)
            prompt_in = _prompt(prompt, request.cache_salt)
            async for output in engine.generate(prompt_in, params, internal, lora_request=lora):
                for completion in output.outputs:
                    delta = self._delta(completion, output, counts, len(prompt))
                    unfinished -= delta.finish_reason is not None
                    yield delta
        except ValueError as exc:  # vLLM's own validation: a client error
            raise InvalidRequest(str(exc)) from exc
        finally:
            if unfinished:
                await engine.abort(internal)

    def _delta(self, completion: Any, output: Any, counts: dict[int, int], prompt_len: int) -> TokenDelta:
        index = completion.index
        counts[index] = counts.get(index, 0) + len(completion.token_ids)
        finish = FinishReason.named(completion.finish_reason)
        usage = None
        if finish is not None:
            usage = Usage(prompt_len, counts[index], output.num_cached_tokens or 0)
        logprobs = _logprobs(completion) if completion.logprobs else ()
        return TokenDelta(index, completion.text, tuple(completion.token_ids), logprobs, finish, usage)

    def _sampling(self, request: GenerateRequest, prompt_len: int) -> Any:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind

        s: SamplingParams = request.sampling
        max_tokens = output_budget(request, prompt_len, self._max_model_len)
        return VllmSamplingParams(
            n=s.n,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k or -1,
            min_p=s.min_p,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            repetition_penalty=s.repetition_penalty,
            seed=s.seed,
            stop=list(s.stop) or None,
            stop_token_ids=list(s.stop_token_ids) or None,
            ignore_eos=s.ignore_eos,
            max_tokens=max_tokens,
            logprobs=s.logprobs,
            logit_bias=dict(s.logit_bias) or None,
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=_structured(s.structured_output),
        )

    async def _beam_search(self, engine: Any, request: GenerateRequest, prompt: list[int]) -> list[TokenDelta]:
        """The n best beams as final deltas (a beam search streams nothing before it ends)."""
        from vllm import SamplingParams as VllmSamplingParams

        s, tokenizer = request.sampling, self._require_prompt().tokenizer
        max_tokens = output_budget(request, len(prompt), self._max_model_len)
        if s.logprobs is not None:
            raise InvalidRequest("logprobs are not returned with beam search", param="logprobs")
        ends = frozenset(s.stop_token_ids) | (frozenset() if s.ignore_eos else {tokenizer.eos_token_id})
        search = BeamSearch[None](width=s.beam_width, n=s.n, max_tokens=max_tokens, end_tokens=ends,
                            length_penalty=s.length_penalty)  # fmt: skip
        one_step = VllmSamplingParams(max_tokens=1, temperature=0.0, logprobs=2 * s.beam_width, detokenize=False)
        base = f"{request.request_id}-{next(self._ids)}"
        for step in itertools.count():
            if search.done:
                break
            tops = await asyncio.gather(*(
                self._top_logprobs(engine, _prompt(prompt + beam.output, request.cache_salt), one_step,
                                   f"{base}-{step}-{i}", self._lora(request))
                for i, beam in enumerate(search.live)
            ))  # fmt: skip
            search.step({id(beam): top for beam, top in zip(search.live, tops, strict=True)})
        return final_deltas(search.best(), lambda ids: tokenizer.decode(ids, skip_special_tokens=True).encode(),
                            s.stop, lambda n: Usage(len(prompt), n))  # fmt: skip

    @staticmethod
    async def _top_logprobs(
        engine: Any, prompt: dict[str, Any], params: Any, request_id: str, lora: Any
    ) -> list[tuple[int, float]]:
        """The top log-probabilities of the token after ``prompt``'s ids, best first."""
        last = None
        async for output in engine.generate(prompt, params, request_id, lora_request=lora):
            last = output
        assert last is not None and last.outputs[0].logprobs
        entries = last.outputs[0].logprobs[0]
        return sorted(((t, lp.logprob) for t, lp in entries.items()), key=lambda e: e[1], reverse=True)

    def _lora(self, request: GenerateRequest) -> Any:
        """The request's ``LoRARequest`` (None: the base model); InvalidRequest for an adapter not configured."""
        if request.adapter is None:
            return None
        try:
            return self._loras[request.adapter]
        except KeyError:
            unknown = f"model `{self._name}` has no LoRA adapter {request.adapter!r}"
            raise InvalidRequest(unknown, param="model") from None

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """Every input through ``AsyncLLM.encode`` (the pooling runner batches them), token ids checked first."""
        if not self._config.serves(Task.EMBED):
            return await super().embed(request)
        from vllm import PoolingParams

        engine, prompt = self._require_engine(), self._require_prompt()
        inputs = []
        for i, item in enumerate(request.inputs):
            ids = list(item) if isinstance(item, tuple) else await asyncio.to_thread(prompt.tokenize, item)
            if isinstance(item, tuple):
                check_token_ids(ids, prompt.n_vocab, "input")
            if not ids or len(ids) > self._max_model_len:
                raise InvalidRequest(
                    f"input: input {i} has {len(ids)} tokens; this model takes 1 to {self._max_model_len}",
                    param="input", code="context_length_exceeded" if ids else None,
                )  # fmt: skip
            inputs.append(ids)

        async def one(ids: list[int]) -> list[float]:
            final = None
            async for output in engine.encode({"prompt_token_ids": ids}, PoolingParams(task="embed"),
                                              f"{request.request_id}-{next(self._ids)}"):  # fmt: skip
                final = output
            assert final is not None
            return [float(x) for x in final.outputs.data.tolist()]

        vectors = await asyncio.gather(*(one(ids) for ids in inputs))
        return Embeddings(tuple(normalized(np.asarray(v)) for v in vectors), sum(map(len, inputs)))

    def _require_engine(self) -> Any:
        if self._engine is None or self._engine.errored:
            raise BackendUnavailable(f"model {self._name!r} is not serving")
        return self._engine

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return await asyncio.to_thread(self._require_prompt().tokenize, text, add_special=add_special)

    async def tokenize_request(self, request: TokenizeRequest) -> Tokenized:
        return await asyncio.to_thread(self._require_prompt().tokenized, request)

    async def detokenize(self, token_ids: list[int]) -> str:
        return await asyncio.to_thread(self._require_prompt().detokenize, token_ids)

    def _require_prompt(self) -> HfPrompt:
        self._require_engine()
        assert self._prompt is not None
        return self._prompt

    def stats(self) -> BackendStats:
        snapshot = self._stats.snapshot
        if self._engine is not None and self._engine.get_num_unfinished_requests() == 0:
            # The stat logger hears from the engine only when it steps: an idle engine holds nothing.
            snapshot = replace(snapshot, running=0, waiting=0, kv_cells_used=0)
        return snapshot

    def healthy(self) -> bool:
        return self._engine is not None and not self._engine.errored

    async def shutdown(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.shutdown()


def _logprobs(completion: Any) -> tuple[TokenLogprob, ...]:
    out = []
    for token_id, entries in zip(completion.token_ids, completion.logprobs, strict=False):
        ranked = sorted(entries.items(), key=lambda e: e[1].rank or 0)
        top = tuple(
            TopLogprob(t, lp.decoded_token or "", lp.logprob, (lp.decoded_token or "").encode())
            for t, lp in ranked
            if lp.rank is not None and lp.rank >= 1
        )
        chosen = entries[token_id]
        text = chosen.decoded_token or ""
        out.append(TokenLogprob(token_id, text, chosen.logprob, text.encode(), top))
    return tuple(out)


def _logger_factory(stats: _Stats) -> Any:
    """A vLLM stat-logger factory feeding ``stats`` (the interface is vLLM's, marked unstable)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _StatLogger(StatLoggerBase):  # type: ignore[misc]  # vllm is not in this venv (make test-vllm): Any here
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            cache = vllm_config.cache_config
            self._cells = (cache.num_gpu_blocks or 0) * cache.block_size

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                   engine_idx: int = 0) -> None:  # fmt: skip
            stats.record(scheduler_stats, iteration_stats, self._cells)

        def log_engine_initialized(self) -> None:
            return None

    return _StatLogger


def _structured(structured: StructuredOutput | None) -> Any:
    """vLLM's own structured outputs for ``structured`` (its guidance/xgrammar backends), or None."""
    if structured is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    kind, spec = structured.kind, structured.spec
    if kind is StructureKind.JSON:
        return StructuredOutputsParams(json_object=True, disable_any_whitespace=True)
    if kind is StructureKind.JSON_SCHEMA:
        return StructuredOutputsParams(json=spec, disable_any_whitespace=True)
    if kind is StructureKind.CHOICE:
        return StructuredOutputsParams(choice=json.loads(spec))
    if kind is StructureKind.REGEX:
        return StructuredOutputsParams(regex=spec)
    return StructuredOutputsParams(grammar=spec)


def _lora_requests(config: VllmConfig) -> dict[str, Any]:
    """A ``LoRARequest`` per configured adapter, ids from 1 (vLLM's 0 is the base model)."""
    if not config.lora_adapters:
        return {}
    from vllm.lora.request import LoRARequest

    return {a.name: LoRARequest(a.name, i, str(a.path)) for i, a in enumerate(config.lora_adapters, start=1)}


def _prompt(ids: list[int], cache_salt: str | None) -> dict[str, Any]:
    """vLLM's TokensPrompt; with the tenant's ``cache_salt``, which vLLM mixes into the hash of the
    prompt's first block so that other tenants' requests cannot hit (and time) its cached blocks
    (CVE-2025-46570)."""
    return {"prompt_token_ids": ids} | ({"cache_salt": cache_salt} if cache_salt else {})
