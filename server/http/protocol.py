"""The OpenAI HTTP schema: request and response models for chat, completions and models.

Requests validate every value a client sends (ranges as OpenAI documents them, plus vLLM's
extensions ``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``, ``stop_token_ids``). A
field nobody defines is a 400 (``Unrecognized request argument supplied``, as OpenAI answers); the
fields OpenAI defines that change nothing here (``ACCEPTED_WITHOUT_EFFECT``: ``store``,
``metadata``, ``service_tier``...) are accepted and named in the request's log line. Structured
outputs come as OpenAI's ``response_format`` (chat) or vLLM's ``structured_outputs`` (chat and
completions), checked here (backends/structured_output.py) before any model sees them; so are
``tools`` (server/http/tools_protocol.py, backends/tools/rules.py). Features lmgate does not
implement (the legacy ``functions``, ``suffix``, ``best_of`` > n) are refused by name rather than ignored.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lmgate.backends import structured_output
from lmgate.backends.sampling_rules import (
    BOUNDS,
    CACHE_SALT_CHARS,
    LOGIT_BIAS,
    LOGPROBS,
    TOKEN_ID,
    best_of_problem,
    choices_problem,
    logit_bias_key_problem,
    stop_problem,
)
from lmgate.backends.tools.rules import (
    MAX_TOOLS,
    TOOLS_AND_FORMAT,
    calls_problem,
    tool_choice_problem,
    tool_list_problem,
)
from lmgate.backends.types import StructuredOutput, StructureKind, ToolChoice, Tools
from lmgate.server.http.tools_protocol import NamedToolChoice, ToolCallDeltaOut, ToolCallOut, ToolCallParam, ToolParam


def _unicode_text(value: str) -> str:
    """A lone surrogate (JSON ``"\\ud800"``) is no character: refuse it here, not in a tokenizer."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"is not valid Unicode: a lone surrogate {value[exc.start]!r} at {exc.start}") from None
    return value


Text = Annotated[str, AfterValidator(_unicode_text)]
# The value rules are backends/sampling_rules.py's, shared with the gRPC edge; its integer ranges are
# the proto's, so a gateway forwarding to a worker never holds a value protobuf cannot.
TokenId = Annotated[int, Field(**TOKEN_ID.field())]


class StreamOptions(BaseModel):
    include_usage: bool = False


class StructuredOutputsParam(BaseModel):
    """vLLM's ``structured_outputs``: exactly one of its fields."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    json_: dict[str, Any] | bool | str | None = Field(default=None, alias="json", description="A JSON Schema.")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = Field(default=None, description="A Lark or GBNF grammar.")
    json_object: bool | None = Field(default=None, description="Any JSON object.")

    def to_internal(self) -> StructuredOutput:
        given = [name for name in ("json_", "regex", "choice", "grammar", "json_object") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("set exactly one of json, regex, choice, grammar and json_object")
        name = given[0]
        if name == "json_":
            spec = self.json_ if isinstance(self.json_, str) else json.dumps(self.json_)
            return StructuredOutput(StructureKind.JSON_SCHEMA, spec)
        if name == "choice":
            return StructuredOutput(StructureKind.CHOICE, json.dumps(self.choice))
        if name == "json_object":
            return StructuredOutput(StructureKind.JSON)
        kind = StructureKind.REGEX if name == "regex" else StructureKind.GRAMMAR
        return StructuredOutput(kind, getattr(self, name))


def _checked(structured: StructuredOutput | None) -> StructuredOutput | None:
    """``structured`` if it can be compiled; a ValueError saying why not (pydantic names the field)."""
    if structured is not None and (rule := structured_output.problem(structured)):
        raise ValueError(rule)
    return structured


ACCEPTED_WITHOUT_EFFECT = frozenset({
    "store", "metadata", "service_tier", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
    "verbosity", "reasoning_effort", "modalities",
})  # fmt: skip
"""Fields OpenAI defines that change nothing here: accepted, and named in the request's log line
(``ignored_fields``). Any other field nobody defines is refused, as OpenAI refuses it."""


def unknown_field(name: str) -> str:
    shown = name if len(name) <= 60 else f"{name[:60]}..."
    return f"Unrecognized request argument supplied: {shown}"


class _Request(BaseModel):
    """Fields chat and completions share; a field no one defines is a 400 (``ACCEPTED_WITHOUT_EFFECT``)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, **BOUNDS["temperature"].field())
    top_p: float | None = Field(default=None, **BOUNDS["top_p"].field())
    top_k: int | None = Field(default=None, **BOUNDS["top_k"].field(), description="vLLM extension; 0 or -1 disables.")
    min_p: float | None = Field(default=None, **BOUNDS["min_p"].field())
    n: int = Field(default=1, **BOUNDS["n"].field())
    max_tokens: int | None = Field(default=None, **BOUNDS["max_tokens"].field())
    stop: Text | list[Text] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    cache_salt: str | None = Field(
        default=None, min_length=1, max_length=CACHE_SALT_CHARS,
        description="vLLM extension: prompt-cache partition (requests share cached prefixes only with the same "
        "salt). With API key records the caller's own key's salt replaces it (docs/routing.md#tenants).",
    )  # fmt: skip
    presence_penalty: float | None = Field(default=None, **BOUNDS["presence_penalty"].field())
    frequency_penalty: float | None = Field(default=None, **BOUNDS["frequency_penalty"].field())
    repetition_penalty: float | None = Field(default=None, **BOUNDS["repetition_penalty"].field())
    seed: int | None = Field(default=None, **BOUNDS["seed"].field())
    logit_bias: dict[str, Annotated[float, Field(**LOGIT_BIAS.field())]] | None = None
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = None
    use_beam_search: bool = Field(default=False, description="vLLM extension: beam search instead of sampling.")
    best_of: int | None = Field(
        default=None, **BOUNDS["best_of"].field(), description="Beam width (with use_beam_search)."
    )
    length_penalty: float = Field(
        default=1.0, **BOUNDS["length_penalty"].field(), description="Beam score = logprob / len**this."
    )
    user: str | None = None
    speculative: StrictBool | None = Field(
        default=None,
        description="lmgate extension: false turns speculative decoding off for this request, true asks for it "
        "where the model enables it (docs/speculative.md); it never changes the output.",
    )
    structured_outputs: StructuredOutputsParam | None = Field(
        default=None, description="vLLM extension: constrain the output to a JSON Schema, regex, choice or grammar."
    )

    @field_validator("structured_outputs")
    @classmethod
    def _check_structured_outputs(cls, value: StructuredOutputsParam | None) -> StructuredOutputsParam | None:
        _checked(value.to_internal() if value is not None else None)
        return value

    @property
    def structured_output(self) -> StructuredOutput | None:
        """The request's constraint on its output, from whichever field set it."""
        return self.structured_outputs.to_internal() if self.structured_outputs is not None else None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if problem := stop_problem([value] if isinstance(value, str) else value or []):
            raise ValueError(problem)
        return value

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if problem := logit_bias_key_problem(key):
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _refuse_unknown_fields(self) -> _Request:
        for name in self.model_extra or {}:
            if name not in ACCEPTED_WITHOUT_EFFECT:
                raise ValueError(unknown_field(name))
        return self

    @property
    def ignored_fields(self) -> list[str]:
        """The accepted fields that have no effect here, as the client sent them."""
        return sorted(self.model_extra or {})

    @model_validator(mode="after")
    def _check_stream_options(self) -> _Request:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if problem := best_of_problem(self.n, self.best_of, self.use_beam_search):
            raise ValueError(problem)
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
    name: str | None = Field(default=None, max_length=256)
    tool_calls: list[ToolCallParam] | None = Field(default=None, description="An assistant message's calls.")
    tool_call_id: str | None = Field(default=None, max_length=256, description="A tool message: the call it answers.")

    @model_validator(mode="after")
    def _check_tool_fields(self) -> ChatMessageParam:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = Field(default=None, description="Always enforced: decoding follows the schema.")


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given with type json_schema, and only then")
        return self

    def to_internal(self) -> StructuredOutput | None:
        return json_output(self.type, self.json_schema.schema_ if self.json_schema is not None else None)


def json_output(kind: str, schema: dict[str, Any] | bool | None) -> StructuredOutput | None:
    """OpenAI's format types (chat's ``response_format``, the Responses API's ``text.format``) as the
    internal constraint: ``json_object``, ``json_schema`` (no schema, or ``true``: any JSON), else none."""
    if kind == "json_object":
        return StructuredOutput(StructureKind.JSON)
    if kind == "json_schema":
        return StructuredOutput(StructureKind.JSON_SCHEMA, json.dumps({} if schema in (None, True) else schema))
    return None


class ChatCompletionRequest(_Request):
    messages: list[ChatMessageParam] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, **BOUNDS["max_tokens"].field())
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, **LOGPROBS.field())
    tools: list[ToolParam] | None = Field(
        default=None, max_length=MAX_TOOLS, description="Functions the model may call."
    )  # the count first: each definition's schema is compiled to be checked
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        default=None, validate_default=True,
        description="Default: auto with tools, none without; required and a named function are enforced "
        "while decoding.",
    )  # fmt: skip
    parallel_tool_calls: bool | None = Field(default=None, description="More than one call per turn (default true).")
    functions: list[Any] | None = Field(default=None, description="Legacy function calling: refused, use tools.")
    function_call: str | dict[str, Any] | None = Field(default=None, description="Legacy: refused, use tool_choice.")
    response_format: ResponseFormat | None = None

    @field_validator("tools")
    @classmethod
    def _check_tools(cls, value: list[ToolParam] | None) -> list[ToolParam] | None:
        if value and (problem := tool_list_problem([t.function.name for t in value])):
            raise ValueError(problem)
        return value

    @field_validator("tool_choice")
    @classmethod
    def _check_tool_choice(cls, value: Any, info: ValidationInfo) -> Any:
        names = [t.function.name for t in info.data.get("tools") or ()]
        choice, function = _tool_choice(value, bool(names))
        if problem := tool_choice_problem(choice, function, names):
            raise ValueError(problem)
        tools = info.data.get("tools")
        if tools and (
            problem := calls_problem(Tools(tuple(t.function.to_internal() for t in tools), choice, function))
        ):
            raise ValueError(problem)
        structured = info.data.get("structured_outputs")
        if names and choice is not ToolChoice.NONE and structured is not None:
            raise ValueError(TOOLS_AND_FORMAT)
        return value

    @field_validator("response_format")
    @classmethod
    def _check_format_without_calls(cls, value: ResponseFormat | None, info: ValidationInfo) -> ResponseFormat | None:
        calls = info.data.get("tools") and _tool_choice(info.data.get("tool_choice"), True)[0] is not ToolChoice.NONE
        if calls and value is not None and value.type != "text":
            raise ValueError(TOOLS_AND_FORMAT)
        return value

    @field_validator("functions", "function_call")
    @classmethod
    def _refuse_legacy_functions(cls, value: Any) -> Any:
        if value:
            raise ValueError("the legacy functions / function_call are not supported: send tools and tool_choice")
        return value

    @field_validator("response_format")
    @classmethod
    def _check_response_format(cls, value: ResponseFormat | None) -> ResponseFormat | None:
        _checked(value.to_internal() if value is not None else None)
        return value

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.response_format is not None and self.response_format.type != "text" and self.structured_outputs:
            raise ValueError("set response_format or structured_outputs, not both")
        return self

    @property
    def tool_set(self) -> Tools | None:
        """The request's tools and how they may be called (None without tools)."""
        if not self.tools:
            return None
        choice, function = _tool_choice(self.tool_choice, True)
        parallel = True if self.parallel_tool_calls is None else self.parallel_tool_calls
        return Tools(tuple(t.function.to_internal() for t in self.tools), choice, function, parallel)

    @property
    def structured_output(self) -> StructuredOutput | None:
        from_format = self.response_format.to_internal() if self.response_format is not None else None
        return from_format or super().structured_output

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def _tool_choice(value: Any, has_tools: bool) -> tuple[ToolChoice, str | None]:
    """``tool_choice`` as the internal choice and named function (OpenAI's default: auto with tools)."""
    if isinstance(value, NamedToolChoice):
        return ToolChoice.FUNCTION, value.function.name
    return ToolChoice(value or ("auto" if has_tools else "none")), None


class CompletionRequest(_Request):
    prompt: Text | list[Text] | list[TokenId] | list[list[TokenId]]
    logprobs: int | None = Field(default=None, **LOGPROBS.field())
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
        if problem := choices_problem(len(self.prompts), self.n):
            raise ValueError(problem)
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt of the batch: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [[x for x in p if isinstance(x, int)]]  # the filter only tells mypy what all() found
        return [x for x in p if not isinstance(x, int)]


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
    tool_calls: list[ToolCallOut] | None = Field(default=None, exclude_if=lambda calls: calls is None)


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
    tool_calls: list[ToolCallDeltaOut] | None = None


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
    tools: bool = Field(default=False, description="Calls functions (`tools` in chat completions).")
    tool_format: str | None = Field(default=None, description="The call format parsed: hermes, llama3 or mistral.")
    tasks: list[str] = Field(default_factory=list, description="What it serves: generate, embed.")
    embedding_size: int | None = Field(default=None, description="Its embeddings' length, when it embeds.")
    parent: str | None = None
    """A LoRA adapter's base model (vLLM's field); None for a base model."""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
