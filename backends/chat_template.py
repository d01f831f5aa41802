"""Rendering chat messages with a model's Jinja chat template (the Hugging Face convention).

Templates come from model files, so they run in Jinja's immutable sandbox. A template that
rejects the conversation (``raise_exception``, e.g. "roles must alternate") is the client's
mistake and becomes ``InvalidRequest`` naming ``messages``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmgate.backends.errors import InvalidRequest
from lmgate.backends.types import ChatMessage

#: Used when a model carries no template (llama-server falls back to ChatML too).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class _TemplateRejected(Exception):
    pass


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRejected(message)


class ChatTemplate:
    """A compiled template; ``render`` is thread-safe."""

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source or CHATML
        self._template = env.from_string(self.source)
        self._bos = bos_token
        self._eos = eos_token

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=[{"role": m.role.value, "content": m.content} for m in messages],
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
