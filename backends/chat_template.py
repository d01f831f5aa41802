"""Rendering chat messages with a model's Jinja chat template (the Hugging Face convention).

Templates come from model files, so they run in Jinja's immutable sandbox. A template that
rejects the conversation (``raise_exception``, e.g. "roles must alternate") is the client's
mistake and becomes ``InvalidRequest`` naming ``messages``.

Messages and tools reach the template in OpenAI's shapes, as Hugging Face's ``apply_chat_template``
passes them: an assistant message's ``tool_calls`` as ``{"id", "type": "function", "function":
{"name", "arguments"}}`` with ``arguments`` parsed into a mapping when it is a JSON object (as vLLM
does; templates write it with ``tojson``), a tool message's ``tool_call_id``, and ``tools`` as
``{"type": "function", "function": {"name", "description", "parameters"}}``. ``tojson`` is Hugging
Face's (plain ``json.dumps``, no HTML escaping), so a template renders here as it does there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmgate.backends.errors import InvalidRequest
from lmgate.backends.types import ChatMessage, GenerateRequest, Tool

#: Used when a model carries no template (llama-server falls back to ChatML too).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tool_list(request: GenerateRequest) -> tuple[Tool, ...]:
    """The tools a chat request shows its template (all of them, whatever ``tool_choice`` says)."""
    return request.tools.functions if request.tools is not None else ()


def client_texts(request: GenerateRequest) -> list[str]:
    """Every text of a chat request that the client wrote and the template may copy into the prompt:
    message contents and names, calls' ids, names and arguments (as written and as ``tojson`` writes
    them), tools' names, descriptions and parameter schemas (as ``tojson`` writes them).
    backends/chat_tokens.py keeps special-token strings inside them plain text."""
    texts: list[str] = []
    for tool in tool_list(request):
        texts += [tool.name, tool.description, _tojson(json.loads(tool.parameters))]
    for message in request.messages or ():
        texts += [message.content, message.name or "", message.tool_call_id or ""]
        for call in message.tool_calls:
            texts += [call.id, call.name, call.arguments, _tojson(_arguments(call.arguments))]
    return texts


class _TemplateRejected(Exception):
    pass


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRejected(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    """Hugging Face's ``tojson`` filter (Jinja's own escapes ``<``, ``>``, ``&`` and ``'`` for HTML)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _arguments(text: str) -> Any:
    """A call's arguments as templates expect them: the object when ``text`` is one, else the text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def openai_message(message: ChatMessage) -> dict[str, Any]:
    """``message`` in OpenAI's chat shape (arguments as JSON text; no content beside calls is null)."""
    out: dict[str, Any] = {"role": message.role.value, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
        out["content"] = message.content or None
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def message_dict(message: ChatMessage) -> dict[str, Any]:
    """``message`` as a template sees it: OpenAI's shape, content always text, arguments parsed."""
    out = openai_message(message) | {"content": message.content}
    for call in out.get("tool_calls", ()):
        call["function"]["arguments"] = _arguments(call["function"]["arguments"])
    return out


def tool_dict(tool: Tool) -> dict[str, Any]:
    """``tool`` as a template sees it (its parameters schema parsed)."""
    function = {"name": tool.name, "description": tool.description, "parameters": json.loads(tool.parameters)}
    return {"type": "function", "function": function}


class ChatTemplate:
    """A compiled template; ``render`` is thread-safe."""

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.filters["tojson"] = _tojson
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source or CHATML
        self._template = env.from_string(self.source)
        self._bos = bos_token
        self._eos = eos_token

    def render(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[Tool] = (), add_generation_prompt: bool = True
    ) -> str:
        """The prompt text; ``tools`` are passed only when there are some (templates test ``if tools``)."""
        try:
            return self._template.render(
                messages=[message_dict(m) for m in messages],
                tools=[tool_dict(t) for t in tools] or None,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except _TemplateRejected as exc:
            raise InvalidRequest(f"the model's chat template rejected the messages: {exc}", param="messages") from exc
        except jinja2.TemplateError as exc:
            raise InvalidRequest(
                f"the model's chat template failed on these messages: {exc}", param="messages"
            ) from exc
