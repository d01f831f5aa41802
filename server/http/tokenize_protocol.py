"""Request and response models of HTTP ``POST /tokenize`` and ``POST /detokenize``, in vLLM's shapes.

    POST /tokenize    {"model", "prompt", "add_special_tokens": true, "return_token_strs": false}
                   or {"model", "messages", "add_generation_prompt": true, "return_token_strs": false}
                   -> {"count", "max_model_len", "tokens", "token_strs"}
    POST /detokenize  {"model", "tokens"} -> {"prompt"}

``model`` may be left out when one model is served (as vLLM, which serves one). With ``messages``
the ids are exactly those a chat completion of these messages is prompted with (the model's
template, BOS unless the template writes it), so ``add_special_tokens`` only applies to ``prompt``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmgate.backends.tokenization import TokenizeRequest
from lmgate.server.http.convert import chat_message
from lmgate.server.http.protocol import ChatMessageParam, Text, TokenId
from lmgate.server.http.tools_protocol import ToolParam

MAX_DETOKENIZE_TOKENS = 1_000_000
"""Far above any context; the body-size cap (server.max_body_bytes) binds first."""


class TokenizeBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, min_length=1, description="May be omitted when one model is served.")
    prompt: Text | None = Field(default=None, description="Raw text, tokenized as a completion prompt.")
    messages: list[ChatMessageParam] | None = Field(
        default=None, min_length=1, description="Chat messages, rendered with the model's chat template."
    )
    add_special_tokens: bool | None = Field(default=None, description="With `prompt`: add BOS (default true).")
    add_generation_prompt: bool = Field(default=True, description="With `messages`: open the assistant's turn.")
    continue_final_message: bool = False
    return_token_strs: bool = Field(default=False, description="Also return each token's vocabulary text.")
    chat_template: str | None = None
    tools: list[ToolParam] | None = Field(default=None, description="With `messages`: the tools the template shows.")

    @model_validator(mode="after")
    def _check(self) -> TokenizeBody:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of `prompt` (text) and `messages` (chat)")
        if self.continue_final_message:
            raise ValueError("continue_final_message is not supported by lmgate yet: send it as false")
        if self.chat_template is not None:
            raise ValueError("a request's own chat_template is not supported: the model's template is used")
        if self.tools and self.messages is None:
            raise ValueError("tools go with `messages`")
        return self

    def internal(self) -> TokenizeRequest:
        messages = None
        if self.messages is not None:
            messages = tuple(chat_message(m) for m in self.messages)
        return TokenizeRequest(
            prompt=self.prompt,
            messages=messages,
            add_special=True if self.add_special_tokens is None else self.add_special_tokens,
            add_generation_prompt=self.add_generation_prompt,
            token_strings=self.return_token_strs,
            tools=tuple(t.function.to_internal() for t in self.tools or ()),
        )


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, min_length=1, description="May be omitted when one model is served.")
    tokens: list[TokenId] = Field(max_length=MAX_DETOKENIZE_TOKENS)


class DetokenizeResponse(BaseModel):
    prompt: str
