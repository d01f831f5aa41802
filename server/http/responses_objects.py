"""The objects ``POST /v1/responses`` answers with: a response, its output message, its usage.

Shaped as OpenAI's (the openai SDK's ``Response``): every field OpenAI always sends is present,
``null`` when lmgate has nothing for it. A response has one output item, the assistant's message,
with one ``output_text`` part. ``ResponseDraft`` holds what is known when the request arrives and
builds the object at each stage (created, then completed / incomplete / failed).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from lmgate.server.http.protocol import TokenLogprobOut, UsageOut
from lmgate.server.http.responses_protocol import ResponsesRequest
from lmgate.server.http.responses_tools import FunctionCallItem

Status = Literal["in_progress", "completed", "incomplete", "failed"]
MessageStatus = Literal["in_progress", "completed", "incomplete"]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[TokenLogprobOut] | None = None


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: MessageStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int

    @classmethod
    def of(cls, usage: UsageOut) -> ResponseUsage:
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
        return cls(
            input_tokens=usage.prompt_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=cached),
            output_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Status
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputMessage | FunctionCallItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: str | dict[str, Any] = "none"
    tools: list[Any] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    store: bool = True
    user: str | None = None
    background: bool = False


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


@dataclass
class ResponseDraft:
    """One response being made: its ids, the request's echoed fields, and the objects of each stage."""

    body: ResponsesRequest
    model: str
    id: str = field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    message_id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(self, status: Status, **fields: Any) -> ResponseObject:
        body = self.body
        return ResponseObject(
            id=self.id, created_at=self.created_at, status=status, instructions=body.instructions,
            max_output_tokens=body.output_limit, model=self.model, previous_response_id=body.previous_response_id,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p, tool_choice=self.tool_choice(),
            tools=[t.model_dump(exclude_none=True) for t in body.tools or ()],
            parallel_tool_calls=body.parallel_tool_calls is not False,
            metadata=body.metadata or {}, store=body.store, user=body.user, text=self.text_config(), **fields,
        )  # fmt: skip

    def tool_choice(self) -> str | dict[str, Any]:
        """``tool_choice`` as OpenAI echoes it: the mode, or the named function."""
        choice = self.body.tool_choice
        if choice is None:
            return "auto" if self.body.tools else "none"
        return choice if isinstance(choice, str) else choice.model_dump()

    def text_config(self) -> dict[str, Any]:
        """The ``text`` the request asked for, echoed as OpenAI does (plain text when none)."""
        given = self.body.text.format if self.body.text is not None else None
        return {"format": given.model_dump(by_alias=True, exclude_none=True) if given else {"type": "text"}}

    def message(self, status: MessageStatus, parts: list[OutputText]) -> OutputMessage:
        return OutputMessage(id=self.message_id, status=status, content=parts)


def final_status(finish_reason: str | None) -> Status:
    """A response's status from its choice's finish reason: cut by the token limit → ``incomplete``."""
    if finish_reason == "length":
        return "incomplete"
    if finish_reason == "abort":
        return "failed"
    return "completed"


def ending_fields(status: Status) -> dict[str, Any]:
    """What a final response says about why it is not ``completed``."""
    if status == "incomplete":
        return {"incomplete_details": IncompleteDetails(reason="max_output_tokens")}
    if status == "failed":
        return {"error": ResponseError(code="server_error", message="the generation was stopped by the server")}
    return {}
