"""Function calling in the Responses API: its flat tool definitions, ``tool_choice``, the
``function_call`` / ``function_call_output`` items a conversation carries, and the ``function_call``
output items a response makes. The rules are chat's (backends/tools/rules.py)."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmgate.backends.tools import rules
from lmgate.backends.types import ChatMessage, Role, Tool, ToolCall, ToolChoice, Tools
from lmgate.server.http.tools_protocol import FunctionDefinition


class FunctionTool(FunctionDefinition):
    """``{"type": "function", "name", "description", "parameters", "strict"}``: chat's function, flat."""

    type: Literal["function"]

    @model_validator(mode="before")
    @classmethod
    def _only_functions(cls, value: Any) -> Any:
        kind = value.get("type") if isinstance(value, dict) else None
        if kind != "function":
            raise ValueError(f"only function tools are supported, not `{str(kind)[:40]}`")
        return value


class NamedFunctionChoice(BaseModel):
    type: Literal["function"]
    name: str


class FunctionCallItem(BaseModel):
    """A call: an input item replaying an earlier answer, or an output item of this one."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function_call"] = "function_call"
    id: str | None = Field(default=None, max_length=256)
    call_id: str = Field(min_length=1, max_length=256)
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(BaseModel):
    """A tool's result, answering ``call_id``."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function_call_output"]
    id: str | None = Field(default=None, max_length=256)
    call_id: str = Field(min_length=1, max_length=256)
    output: str


def tool_choice(value: str | NamedFunctionChoice | None, has_tools: bool) -> tuple[ToolChoice, str | None]:
    """The internal choice and named function (OpenAI's default: auto with tools, none without)."""
    if isinstance(value, NamedFunctionChoice):
        return ToolChoice.FUNCTION, value.name
    return ToolChoice(value or ("auto" if has_tools else "none")), None


def choice_problem(value: str | NamedFunctionChoice | None, tools: list[FunctionTool] | None) -> str | None:
    names = [t.name for t in tools or ()]
    if problem := rules.tool_list_problem(names):
        return problem
    choice, function = tool_choice(value, bool(names))
    if problem := rules.tool_choice_problem(choice, function, names):
        return problem
    return rules.calls_problem(Tools(internal_tools(tools or []), choice, function))


def internal_tools(tools: list[FunctionTool]) -> tuple[Tool, ...]:
    return tuple(t.to_internal() for t in tools)


def merged(messages: list[ChatMessage], item: FunctionCallItem | FunctionCallOutputItem) -> None:
    """Appends ``item`` to the conversation as chat sees it: calls join the assistant turn just before
    them (or start one), a result is a tool message."""
    if isinstance(item, FunctionCallOutputItem):
        messages.append(ChatMessage(Role.TOOL, item.output, tool_call_id=item.call_id))
        return
    call = ToolCall(item.call_id, item.name, item.arguments)
    last = messages[-1] if messages else None
    if last is not None and last.role is Role.ASSISTANT and last.tool_call_id is None:
        messages[-1] = ChatMessage(Role.ASSISTANT, last.content, (*last.tool_calls, call), name=last.name)
    else:
        messages.append(ChatMessage(Role.ASSISTANT, "", (call,)))


def output_item(call: ToolCall, status: Literal["in_progress", "completed", "incomplete"]) -> FunctionCallItem:
    return FunctionCallItem(id=f"fc_{uuid.uuid5(uuid.NAMESPACE_OID, call.id).hex}", call_id=call.id, name=call.name,
                            arguments=call.arguments, status=status)  # fmt: skip
