"""OpenAI's function-calling shapes in chat completions: ``tools``, ``tool_choice``, an assistant
message's ``tool_calls``, and the calls in responses and stream chunks. The rules are
backends/tools/rules.py's, shared with the gRPC edge."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmgate.backends.tools import rules
from lmgate.backends.types import Tool, ToolCall


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    description: str | None = Field(default=None, max_length=rules.MAX_DESCRIPTION_CHARS)
    parameters: dict[str, Any] | None = Field(default=None, description="A JSON Schema of the arguments object.")
    strict: bool | None = Field(default=None, description="Always enforced when a call is forced.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if problem := rules.name_problem(value):
            raise ValueError(problem)
        return value

    @field_validator("parameters")
    @classmethod
    def _check_parameters(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and (problem := rules.parameters_problem(json.dumps(value))):
            raise ValueError(problem)
        return value

    def to_internal(self) -> Tool:
        parameters = json.dumps(self.parameters) if self.parameters is not None else rules.EMPTY_PARAMETERS
        return Tool(self.name, self.description or "", parameters)


class ToolParam(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class FunctionCallParam(BaseModel):
    name: str
    arguments: str = Field(description="The arguments object as JSON text.")


class ToolCallParam(BaseModel):
    """A call in an earlier assistant message."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=rules.MAX_ID_CHARS)
    type: Literal["function"] = "function"
    function: FunctionCallParam

    def to_internal(self) -> ToolCall:
        return ToolCall(self.id, self.function.name, self.function.arguments)


# --- responses ---


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class FunctionCallDeltaOut(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDeltaOut(BaseModel):
    """A piece of a streamed call: ``id``, ``type`` and ``function.name`` on its first piece only."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDeltaOut
