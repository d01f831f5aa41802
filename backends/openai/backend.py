"""The ``openai`` backend: a model on any OpenAI-compatible server, streamed through.

Chat requests go to /chat/completions, prompts to /completions, always streamed with
``stream_options.include_usage``; parameters beyond OpenAI's own are sent as body extensions
(vLLM, llama-server and lmgate read them). The upstream's usage arrives once, after every choice;
each choice's last delta waits for it. Closing the stream closes the HTTP response, which is how
such servers learn that the client went away. Embedding requests go to /embeddings. Uses the
official ``openai`` SDK.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator
from typing import Any, cast

import openai
from openai.types.chat import ChatCompletionMessageParam

from lmgate.backends.base import Backend
from lmgate.backends.chat_template import openai_message
from lmgate.backends.embedding import Embeddings, EmbedRequest
from lmgate.backends.errors import BackendError, BackendUnavailable, InvalidRequest
from lmgate.backends.openai.config import OPENAI_PARAMS, OpenAIConfig
from lmgate.backends.types import (
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
    ToolCallDelta,
    ToolChoice,
    Tools,
    TopLogprob,
)
from lmgate.backends.upstream_usage import UsageSplitter


class OpenAIBackend(Backend):
    def __init__(self, name: str, config: OpenAIConfig) -> None:
        self._name = name
        self._config = config
        self._remote = config.remote_model or name
        self._client: openai.AsyncOpenAI | None = None
        self._info: ModelInfo | None = None
        self._open = 0

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise BackendUnavailable(f"model {self._name!r} is not connected")
        return self._info

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(frozenset(self._config.supported_params), max_n=128, tools=self._config.tools)

    async def start(self) -> None:
        key = os.environ.get(self._config.api_key_env, "") if self._config.api_key_env else ""
        self._client = openai.AsyncOpenAI(
            base_url=self._config.base_url, api_key=key or "unused", max_retries=0, timeout=self._config.timeout_s
        )
        try:
            models = await self._client.models.list()
        except openai.OpenAIError as exc:
            raise BackendUnavailable(f"{self._config.base_url} does not answer /models: {exc}") from exc
        card = next((m for m in models.data if m.id == self._remote), None)
        if card is None:
            raise BackendUnavailable(f"{self._config.base_url} does not serve model {self._remote!r}")
        extra = card.model_extra or {}
        length = extra.get("context_length") or extra.get("max_model_len") or self._config.context_length
        self._info = ModelInfo(self._name, "openai", int(length or 0), extra.get("quantization"))

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta, None]:
        client = self._require_client()
        params = self._params(request.sampling)
        if self._config.send_cache_salt and request.cache_salt:
            params["extra_body"] = {**params.get("extra_body", {}), "cache_salt": request.cache_salt}
        try:
            if request.messages is not None:
                # lmgate's Role values are OpenAI's role names; the SDK has a TypedDict per role.
                messages = cast("list[ChatCompletionMessageParam]", [openai_message(m) for m in request.messages])
                if request.tools is not None:
                    params |= _tools(request.tools)
                stream: openai.AsyncStream[Any] = await client.chat.completions.create(
                    model=self._remote, messages=messages, stream=True, **params
                )
            else:
                prompt: Any = request.prompt if request.prompt is not None else list(request.prompt_token_ids or ())
                stream = await client.completions.create(model=self._remote, prompt=prompt, stream=True, **params)
        except openai.OpenAIError as exc:
            raise _error(exc, self._config.base_url) from exc
        self._open += 1
        split = UsageSplitter(request.sampling.n)
        usage = None
        try:
            async for chunk in stream:
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    delta = _delta(choice, chat=request.messages is not None)
                    # Servers stream a token per content chunk; ids are not sent.
                    if (now := split.add(delta, bool(delta.text or delta.tool_calls))) is not None:
                        yield now
            for held in split.release(*_usage_counts(usage)):
                yield held
        except openai.OpenAIError as exc:
            raise _error(exc, self._config.base_url) from exc
        finally:
            self._open -= 1
            await stream.close()

    def _params(self, sampling: SamplingParams) -> dict[str, Any]:
        supported = set(self._config.supported_params)
        params: dict[str, Any] = {  # stream=True is passed on its own, for the SDK's overloads to see
            "stream_options": {"include_usage": True},
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "n": sampling.n,
        }
        optional = {
            "max_tokens": sampling.max_tokens,
            "stop": list(sampling.stop) or None,
            "seed": sampling.seed,
            "presence_penalty": sampling.presence_penalty or None,
            "frequency_penalty": sampling.frequency_penalty or None,
            "logit_bias": {str(t): b for t, b in sampling.logit_bias} or None,
        }
        params |= {k: v for k, v in optional.items() if v is not None and k in supported}
        extensions = {
            "top_k": sampling.top_k or None,
            "min_p": sampling.min_p or None,
            "repetition_penalty": sampling.repetition_penalty if sampling.repetition_penalty != 1.0 else None,
            "ignore_eos": sampling.ignore_eos or None,
            "stop_token_ids": list(sampling.stop_token_ids) or None,
        }
        extra: dict[str, Any] = {
            k: v for k, v in extensions.items() if v is not None and k in supported and k not in OPENAI_PARAMS
        }
        if sampling.structured_output is not None and "structured_output" in supported:
            extra["structured_outputs"] = _structured_outputs(sampling.structured_output)
        if extra:
            params["extra_body"] = extra
        return params

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """Forwarded to the upstream's /embeddings as floats; ``dimensions`` is applied by the gateway."""
        texts = [i for i in request.inputs if isinstance(i, str)]
        ids = [list(i) for i in request.inputs if not isinstance(i, str)]
        if texts and ids:
            raise InvalidRequest(
                "input: an OpenAI-compatible upstream takes texts or token ids, not both in one request", param="input"
            )
        try:
            response = await self._require_client().embeddings.create(
                model=self._remote, input=texts or ids, encoding_format="float"
            )
        except openai.OpenAIError as exc:
            raise _error(exc, self._config.base_url) from exc
        ordered = sorted(response.data, key=lambda d: d.index)
        return Embeddings(tuple(tuple(d.embedding) for d in ordered), response.usage.prompt_tokens)

    def _require_client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            raise BackendUnavailable(f"model {self._name!r} is not connected")
        return self._client

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        raise InvalidRequest("tokenize is not available for a model on an OpenAI-compatible upstream")

    async def detokenize(self, token_ids: list[int]) -> str:
        raise InvalidRequest("token-id prompts cannot be echoed for a model on an OpenAI-compatible upstream")

    def stats(self) -> BackendStats:
        return BackendStats(running=self._open)

    def healthy(self) -> bool:
        return self._client is not None

    async def shutdown(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _tools(tools: Tools) -> dict[str, Any]:
    """The request's tools as OpenAI's parameters."""
    functions = [
        {"type": "function", "function": {"name": t.name, "description": t.description,
                                          "parameters": json.loads(t.parameters)}}
        for t in tools.functions
    ]  # fmt: skip
    choice: Any = tools.choice.value
    if tools.choice is ToolChoice.FUNCTION:
        choice = {"type": "function", "function": {"name": tools.function}}
    return {"tools": functions, "tool_choice": choice, "parallel_tool_calls": tools.parallel}


def _call_deltas(choice: Any) -> tuple[ToolCallDelta, ...]:
    calls = getattr(choice.delta, "tool_calls", None) or ()
    return tuple(
        ToolCallDelta(c.index, c.id, c.function.name if c.function else None,
                      (c.function.arguments or "") if c.function else "")
        for c in calls
    )  # fmt: skip


def _delta(choice: Any, *, chat: bool) -> TokenDelta:
    text = (choice.delta.content or "") if chat else (choice.text or "")
    logprobs: tuple[TokenLogprob, ...] = ()
    content = getattr(choice.logprobs, "content", None) if chat and choice.logprobs else None
    if content:
        logprobs = tuple(
            TokenLogprob(-1, lp.token, lp.logprob, bytes(lp.bytes or b""),
                         tuple(TopLogprob(-1, t.token, t.logprob, bytes(t.bytes or b"")) for t in lp.top_logprobs))
            for lp in content
        )  # fmt: skip
    calls = _call_deltas(choice) if chat else ()
    return TokenDelta(choice.index, text, (), logprobs, FinishReason.named(choice.finish_reason), tool_calls=calls)


def _usage_counts(usage: Any) -> tuple[int, int | None, int]:
    """(prompt, completion, cached) of an OpenAI usage object, or zeros when the server sent none."""
    if usage is None:
        return 0, None, 0
    details = getattr(usage, "prompt_tokens_details", None)
    return usage.prompt_tokens, usage.completion_tokens, getattr(details, "cached_tokens", 0) or 0


def _error(exc: openai.OpenAIError, base_url: str) -> BackendError:
    if isinstance(exc, openai.BadRequestError):
        body = exc.body if isinstance(exc.body, dict) else {}
        return InvalidRequest(str(body.get("message") or exc.message), param=body.get("param"), code=body.get("code"))
    return BackendUnavailable(f"upstream {base_url}: {exc}")


def _structured_outputs(structured: StructuredOutput) -> dict[str, Any]:
    """``structured`` as vLLM's ``structured_outputs`` request extension (vLLM and lmgate read it)."""
    kind, spec = structured.kind, structured.spec
    if kind is StructureKind.JSON:
        return {"json_object": True}
    if kind in (StructureKind.JSON_SCHEMA, StructureKind.CHOICE):
        return {"json" if kind is StructureKind.JSON_SCHEMA else "choice": json.loads(spec)}
    return {kind.value: spec}
