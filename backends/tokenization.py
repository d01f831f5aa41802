"""Tokenizing a prompt as a request would be prompted: the types behind HTTP ``/tokenize``.

A ``TokenizeRequest`` holds either a raw prompt or chat messages. Chat messages go through the same
code path as a chat generation (the model's template, the BOS rule, special-token text in a message
kept as text: backends/chat_tokens.py), so ``/tokenize`` counts exactly the tokens
``/v1/chat/completions`` would be prompted with.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmgate.backends.types import ChatMessage, GenerateRequest, Tool, Tools


@dataclass(frozen=True, slots=True)
class TokenizeRequest:
    """Exactly one of ``prompt`` and ``messages`` is set.

    ``add_special`` applies to ``prompt`` (BOS as a completion prompt gets it); chat messages follow
    generation's rule (BOS unless the template writes it). ``add_generation_prompt`` applies to
    ``messages``: the assistant turn's opening is appended, as for a chat completion.
    """

    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    add_special: bool = True
    add_generation_prompt: bool = True
    token_strings: bool = False
    """Also return each token's text in the vocabulary (``Ġhello``, ``<|im_start|>``)."""
    tools: tuple[Tool, ...] = ()
    """With ``messages``: the tools the template shows, as a chat request with them."""

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of prompt and messages must be set")

    def chat_request(self, model: str) -> GenerateRequest:
        """The chat generation whose prompt these messages are (only with ``messages``)."""
        assert self.messages is not None
        tools = Tools(self.tools) if self.tools else None
        return GenerateRequest(request_id="tokenize", model=model, messages=self.messages, tools=tools)


@dataclass(frozen=True, slots=True)
class Tokenized:
    token_ids: tuple[int, ...]
    token_strings: tuple[str, ...] | None = None
    """One per id when asked for, else None."""
