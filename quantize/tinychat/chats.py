"""Training dialogues as the server sees requests, rendered by the server's own template code.

A ``Chat`` is what a chat request carries: ``lmgate.backends.types`` messages and tools. ``render``
runs it through ``lmgate.backends.chat_template.ChatTemplate`` with the model's template, exactly as
the llama.cpp backend renders a request, so the text the model is trained on and the text it is
served can never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmgate.backends.chat_template import ChatTemplate
from lmgate.backends.types import ChatMessage, Role, Tool
from lmgate.quantize.tinychat.corpus import Dialogue


@dataclass(frozen=True)
class Chat:
    """A dialogue as a request holds it: its messages and the tools it lists (none for plain chat)."""

    messages: tuple[ChatMessage, ...]
    tools: tuple[Tool, ...] = ()


def plain_chat(dialogue: Dialogue) -> Chat:
    """A plain corpus dialogue (corpus.py) as chat messages, no tools."""
    system = [ChatMessage(Role.SYSTEM, dialogue.system)] if dialogue.system else []
    turns = [ChatMessage(role, text) for user, answer in dialogue.turns
             for role, text in ((Role.USER, user), (Role.ASSISTANT, answer))]  # fmt: skip
    return Chat((*system, *turns))


def render(chat: Chat, template: ChatTemplate) -> str:
    """The whole chat as ``template`` renders it for the server (no generation prompt: the last
    assistant turn is part of the text)."""
    return template.render(chat.messages, tools=chat.tools, add_generation_prompt=False)
