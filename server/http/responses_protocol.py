"""The request of ``POST /v1/responses`` (OpenAI's Responses API), validated like chat's.

Sampling fields are chat's own (``_Request``: the same ranges, the same vLLM extensions), so a value
valid in one API is valid in the other. ``input`` is text or a list of message items (``role`` and
``content``: text or ``input_text`` / ``output_text`` parts); ``instructions`` becomes the system
message; ``text.format`` (``json_object``, ``json_schema``) is a structured output, as chat's
``response_format``. Function tools, ``tool_choice``, ``parallel_tool_calls`` and the
``function_call`` / ``function_call_output`` items are chat's function calling
(server/http/responses_tools.py). What lmgate does not implement is refused by name rather than
ignored: tools other than functions, images and files, ``background``, ``truncation: auto``,
``conversation`` and prompt templates, and ``n`` > 1 (a response has one output).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from lmgate.backends import structured_output
from lmgate.backends.sampling_rules import UINT32_MAX
from lmgate.backends.tools.rules import MAX_TOOLS, TOOLS_AND_FORMAT
from lmgate.backends.types import StructuredOutput, ToolChoice, Tools
from lmgate.server.http.protocol import Text, _Request, json_output
from lmgate.server.http.responses_tools import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    NamedFunctionChoice,
    choice_problem,
    internal_tools,
    tool_choice,
)

MAX_INPUT_ITEMS = 2048
MAX_METADATA_KEYS = 16
LOGPROBS_INCLUDE = "message.output_text.logprobs"
_TOOL_ITEMS = ("custom_tool_call", "custom_tool_call_output")


def _text_or_list(list_tag: str) -> Callable[[Any], str]:
    """A union of text and a list, validated as the one the value is: its errors come from that branch
    only (a tag with brackets is left out of the field path that errors name)."""
    return lambda value: "str" if isinstance(value, str) else list_tag


class InputText(BaseModel):
    """A text part of a message: ``input_text`` (what the user wrote), ``output_text`` (an earlier answer)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["input_text", "output_text", "text"]
    text: Text

    @model_validator(mode="before")
    @classmethod
    def _only_text(cls, value: Any) -> Any:
        kind = value.get("type") if isinstance(value, dict) else None
        if isinstance(kind, str) and kind.startswith("input_") and kind != "input_text":
            raise ValueError(f"`{kind[:40]}` parts are not supported: lmgate's models take text only (`input_text`)")
        return value


class InputMessage(BaseModel):
    """A message item (``{"role", "content"}``, with or without ``"type": "message"``)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Annotated[
        Annotated[Text, Tag("str")] | Annotated[list[InputText], Tag("list[parts]")],
        Discriminator(_text_or_list("list[parts]")),
    ]

    @model_validator(mode="before")
    @classmethod
    def _only_messages(cls, value: Any) -> Any:
        kind = value.get("type", "message") if isinstance(value, dict) else "message"
        if kind in _TOOL_ITEMS:
            raise ValueError(f"`{kind}` items are not supported: lmgate calls function tools only")
        if kind != "message":
            raise ValueError(f"input items of type `{str(kind)[:40]}` are not supported: send messages (role, content)")
        return value

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content


class TextFormat(BaseModel):
    """The Responses API's ``text.format``: chat's ``response_format``, flattened."""

    model_config = ConfigDict(populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = Field(default=None, description="Always enforced: decoding follows the schema.")

    @model_validator(mode="after")
    def _named(self) -> TextFormat:
        if self.type == "json_schema" and self.name is None:
            raise ValueError("a json_schema format has a name")
        return self

    def to_internal(self) -> StructuredOutput | None:
        return json_output(self.type, self.schema_)


class TextConfig(BaseModel):
    """``text``: the output's format (other keys, such as ``verbosity``, are accepted without effect)."""

    format: TextFormat | None = None


_REFUSALS: dict[str, Callable[[Any], bool]] = {
    "truncation": lambda v: v not in (None, "disabled"),
    "background": bool,
    "conversation": lambda v: v is not None,
    "prompt": lambda v: v is not None,
    "n": lambda v: v != 1,
}
_REFUSAL_MESSAGES = {
    "truncation": "only `disabled` is supported (a conversation too long for the context is a 400)",
    "background": "background responses are not supported: send the request without `background`",
    "conversation": "conversations are not supported: chain turns with previous_response_id",
    "prompt": "prompt templates are not supported: send `input` and `instructions`",
    "n": "a response has one output: use /v1/chat/completions for n > 1",
}


def _item_kind(value: Any) -> str:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")
    return kind if kind in ("function_call", "function_call_output") else "message"


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_kind),
]


class ResponsesRequest(_Request):
    input: Annotated[
        Annotated[Text, Tag("str")] | Annotated[list[InputItem], Tag("list[items]")],
        Discriminator(_text_or_list("list[items]")),
    ] = Field(description="The user's text, or the conversation's items: messages, function calls and their outputs.")
    instructions: Text | None = Field(default=None, description="The system message; not carried to later turns.")
    max_output_tokens: int | None = Field(default=None, ge=1, le=UINT32_MAX)
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=200)
    store: bool = Field(default=True, description="Keep the response for previous_response_id and GET (bounded).")
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    include: list[str] | None = None
    tools: list[FunctionTool] | None = Field(
        default=None, max_length=MAX_TOOLS, description="Functions the model may call."
    )
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = Field(
        default=None, validate_default=True, description="Default: auto with tools, none without."
    )
    parallel_tool_calls: bool | None = Field(default=None, description="More than one call per turn (default true).")
    text: TextConfig | None = None
    truncation: str | None = None
    background: bool | None = None
    reasoning: dict[str, Any] | None = None
    conversation: Any = None
    prompt: Any = None

    @field_validator("tool_choice")
    @classmethod
    def _check_tool_choice(cls, value: Any, info: ValidationInfo) -> Any:
        if problem := choice_problem(value, info.data.get("tools")):
            raise ValueError(problem)
        return value

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be an empty list")
        if isinstance(value, list) and len(value) > MAX_INPUT_ITEMS:
            raise ValueError(f"at most {MAX_INPUT_ITEMS} items, got {len(value)}: continue with previous_response_id")
        return value

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value and len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} keys, got {len(value)}")
        if value and any(len(k) > 64 for k in value):
            raise ValueError("keys are at most 64 characters")
        return value

    @field_validator(*_REFUSALS, mode="after")
    @classmethod
    def _refuse_unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name  # always set for a field validator
        if name is not None and _REFUSALS[name](value):
            raise ValueError(_REFUSAL_MESSAGES[name])
        return value

    @field_validator("text")
    @classmethod
    def _check_text_format(cls, value: TextConfig | None) -> TextConfig | None:
        structured = value.format.to_internal() if value is not None and value.format is not None else None
        if structured is not None and (rule := structured_output.problem(structured)):
            raise ValueError(rule)
        return value

    @model_validator(mode="after")
    def _one_format(self) -> ResponsesRequest:
        from_text = self.text is not None and self.text.format is not None and self.text.format.type != "text"
        if from_text and self.structured_outputs is not None:
            raise ValueError("set text.format or structured_outputs, not both")
        tools = self.tool_set
        if tools is not None and tools.choice is not ToolChoice.NONE and self.structured_output is not None:
            raise ValueError(TOOLS_AND_FORMAT)
        return self

    @property
    def tool_set(self) -> Tools | None:
        """The request's tools and how they may be called (None without tools)."""
        if not self.tools:
            return None
        choice, function = tool_choice(self.tool_choice, True)
        parallel = True if self.parallel_tool_calls is None else self.parallel_tool_calls
        return Tools(internal_tools(self.tools), choice, function, parallel)

    @property
    def structured_output(self) -> StructuredOutput | None:
        if self.text is not None and self.text.format is not None and (given := self.text.format.to_internal()):
            return given
        return super().structured_output

    @property
    def output_limit(self) -> int | None:
        return self.max_output_tokens if self.max_output_tokens is not None else self.max_tokens

    @property
    def logprobs(self) -> int | None:
        """Top alternatives per token when log-probabilities are asked for (``include`` or ``top_logprobs``)."""
        if self.top_logprobs is None and LOGPROBS_INCLUDE not in (self.include or ()):
            return None
        return self.top_logprobs or 0
