"""Prompt token ids from a Hugging Face tokenizer and the checkpoint's chat template.

Shared by the backends that serve HF checkpoints (vllm, transformers). Chat messages are rendered
with the checkpoint's template and tokenized with the llama.cpp backend's BOS rule: a template that
writes BOS itself gets none added, so every engine sees the same tokens for the same request.
"""

from __future__ import annotations

from typing import Any

from lmgate.backends.chat_template import ChatTemplate, client_texts, tool_list
from lmgate.backends.chat_tokens import ChatTokenizer
from lmgate.backends.engine.limits import check_token_ids
from lmgate.backends.errors import InvalidRequest
from lmgate.backends.tokenization import Tokenized, TokenizeRequest
from lmgate.backends.types import GenerateRequest


class HfPrompt:
    """Wraps a loaded tokenizer (``transformers.PreTrainedTokenizerBase`` or vLLM's); thread-safe for reads."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.n_vocab = len(tokenizer)
        self._bos = tokenizer.bos_token or ""
        self.template = ChatTemplate(
            getattr(tokenizer, "chat_template", None), bos_token=self._bos, eos_token=tokenizer.eos_token or ""
        )
        # Message content is text: added/special tokens typed into it are split, not parsed.
        self._chat_tokens = ChatTokenizer(
            tokenizer.get_added_vocab(),
            plain=lambda text: list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)),
            parsed=lambda text, add_special: self.tokenize(text, add_special=add_special),
            bos=tokenizer.bos_token_id,
        )

    def ids(self, request: GenerateRequest, *, add_generation_prompt: bool = True) -> list[int]:
        """The prompt of ``request`` as token ids; raises ``InvalidRequest`` for an empty prompt or a bad id."""
        if request.prompt_token_ids is not None:
            ids = list(request.prompt_token_ids)
            check_token_ids(ids, self.n_vocab, "prompt")
        elif request.messages is not None:
            text = self.template.render(
                request.messages, tools=tool_list(request), add_generation_prompt=add_generation_prompt
            )
            add_special = not (self._bos and text.startswith(self._bos))
            ids = self._chat_tokens.tokenize(text, client_texts(request), add_special=add_special)
        else:
            ids = self.tokenize(request.prompt or "", add_special=True)
        if not ids:
            raise InvalidRequest("the prompt is empty", param="prompt" if request.messages is None else "messages")
        return ids

    def tokenized(self, request: TokenizeRequest) -> Tokenized:
        """See ``Backend.tokenize_request``: chat messages go through ``ids``, as a chat generation's."""
        if request.messages is not None:
            ids = self.ids(request.chat_request(""), add_generation_prompt=request.add_generation_prompt)
        else:
            ids = self.tokenize(request.prompt or "", add_special=request.add_special)
        strings = tuple(self.tokenizer.convert_ids_to_tokens(ids)) if request.token_strings else None
        return Tokenized(tuple(ids), strings)

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    def detokenize(self, token_ids: list[int]) -> str:
        check_token_ids(token_ids, self.n_vocab, "tokens")
        text: str = self.tokenizer.decode(token_ids, skip_special_tokens=True)  # transformers is untyped
        return text
