"""The OpenAI HTTP schema: request and response models for chat, completions and models.

Requests validate every value a client sends (ranges as OpenAI documents them, plus vLLM's
extensions ``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``, ``stop_token_ids``);
unknown fields are ignored as OpenAI-compatible servers do. Features lmgate does not implement
(tools, structured output, ``suffix``, ``best_of`` > n) are refused by name rather than ignored.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator


def _unicode_text(value: str) -> str:
    """A lone surrogate (JSON ``"\\ud800"``) is no character: refuse it here, not in a tokenizer."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"is not valid Unicode: a lone surrogate {value[exc.start]!r} at {exc.start}") from None
    return value


Text = Annotated[str, AfterValidator(_unicode_text)]
# The public API's integer ranges are the gRPC API's (protos/lmgate/v1), so a request valid over one
# transport fits the other, and a gateway forwarding to a worker never holds a value protobuf cannot.
TokenId = Annotated[int, Field(ge=0, lt=2**31)]
UINT32_MAX = 2**32 - 1
_TOKEN_ID_KEY = re.compile(r"[0-9]{1,10}")

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
MAX_STOP = 16
MAX_N = 128


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Request(BaseModel):
    """Fields chat and completions share."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: int | None = Field(default=None, ge=-1, lt=2**31, description="vLLM extension; 0 or -1 disables.")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    max_tokens: int | None = Field(default=None, ge=1, le=UINT32_MAX)
    stop: Text | list[Text] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    cache_salt: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="vLLM extension: prompt-cache partition (requests share cached prefixes only with the same "
        "salt). With API key records the caller's own key's salt replaces it (docs/routing.md#tenants).",
    )  # fmt: skip
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = None
    use_beam_search: bool = Field(default=False, description="vLLM extension: beam search instead of sampling.")
    best_of: int | None = Field(default=None, ge=1, le=MAX_N, description="Beam width (with use_beam_search).")
    length_penalty: float = Field(default=1.0, ge=-10.0, le=10.0, description="Beam score = logprob / len**this.")
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not _TOKEN_ID_KEY.fullmatch(key) or int(key) >= 2**31:
                raise ValueError(f"keys must be token ids (integers from 0 to 2^31-1) written as strings, got {key!r}")
        return value

    @model_validator(mode="after")
    def _check_stream_options(self) -> _Request:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) must be at least n ({self.n})")
        if self.best_of not in (None, self.n) and not self.use_beam_search:
            raise ValueError("best_of different from n is only supported with use_beam_search")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessageParam(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_Request):
    messages: list[ChatMessageParam] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=UINT32_MAX)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("tools")
    @classmethod
    def _refuse_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("function calling is not supported by lmgate yet: send the request without `tools`")
        return value

    @field_validator("response_format")
    @classmethod
    def _refuse_structured_output(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value and value.get("type", "text") != "text":
            raise ValueError(
                "structured output (json_object, json_schema) is not supported by lmgate yet: send the request "
                'without `response_format`, or with {"type": "text"}'
            )
        return value

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Request):
    prompt: Text | list[Text] | list[TokenId] | list[list[TokenId]]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str | list[str] | list[int] | list[list[int]]) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        if isinstance(value, list) and any(isinstance(v, list) and not v for v in value):
            raise ValueError("a token-id prompt must not be empty")
        return value

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix (fill-in-the-middle) is not supported by lmgate yet")
        if self.echo and self.logprobs is not None:
            raise ValueError("echo together with logprobs (prompt logprobs) is not supported by lmgate yet")
        choices = len(self.prompts) * self.n
        if choices > MAX_N:
            raise ValueError(
                f"one request may ask for at most {MAX_N} choices (prompts x n); this one asks for {choices}: "
                "send the prompts in several requests"
            )
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt of the batch: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


# --- responses ---


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(TopLogprobOut):
    top_logprobs: list[TopLogprobOut] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageOut


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageOut | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lmgate"
    backend: str
    ready: bool = True
    context_length: int | None = None
    quantization: str | None = None
    aliases: list[str] = Field(default_factory=list)
    replicas: int = 1
    supported_params: list[str] = Field(default_factory=list)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
