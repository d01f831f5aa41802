"""The ``llamacpp`` kind inside its engine process: a GGUF model on lmgate's continuous-batching CPU engine.

Refuses a llama.cpp build that is unsafe on this CPU (backends/llamacpp/cpu_build.py), loads the
model, and turns each submitted ``GenerateRequest`` into token ids (rendering chat messages with the
model's template), checks it against the model (context length, vocabulary) and hands one sequence
per choice to the engine thread. The gateway side is backends/engine/process_backend.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import llama_cpp

from lmgate.backends.chat_template import ChatTemplate, client_texts, tool_list
from lmgate.backends.chat_tokens import ChatTokenizer
from lmgate.backends.embedding import Embeddings, EmbedRequest
from lmgate.backends.engine.limits import check_sampling, check_token_ids, output_budget
from lmgate.backends.engine.output_text import OutputText
from lmgate.backends.engine.thread import Publish
from lmgate.backends.errors import InvalidRequest, ModelLoadError
from lmgate.backends.llamacpp import cpu_build
from lmgate.backends.llamacpp.config import LlamaCppConfig
from lmgate.backends.llamacpp.embedder import EmbedJob
from lmgate.backends.llamacpp.engine import Engine, Request
from lmgate.backends.llamacpp.grammar import matchers
from lmgate.backends.llamacpp.llama_model import LlamaModel
from lmgate.backends.llamacpp.sequence import Sequence
from lmgate.backends.tokenization import Tokenized, TokenizeRequest
from lmgate.backends.tools import formats
from lmgate.backends.types import (
    BEAM_SEARCH_PARAMS,
    STANDARD_SAMPLING_PARAMS,
    Capabilities,
    GenerateRequest,
    ModelInfo,
    ToolChoice,
)

SAMPLING_PARAMS = STANDARD_SAMPLING_PARAMS | BEAM_SEARCH_PARAMS | {"structured_output"}


def check_build() -> None:
    """Raise ``ModelLoadError`` when the installed llama.cpp would crash (AMX) or fault (SIGILL) here."""
    reason = cpu_build.unsafe_build_reason(llama_cpp.llama_print_system_info().decode(), cpu_build.cpu_flags())
    if reason:
        raise ModelLoadError(reason)


class LlamaCppHost:
    """A loaded GGUF model and its engine (not started); see ``engine_host.Host``."""

    def __init__(
        self, name: str, config: LlamaCppConfig, publish: Publish, on_failure: Callable[[BaseException], None]
    ) -> None:
        check_build()
        self._config = config
        self.model = LlamaModel(config)
        model = self.model
        self._template = ChatTemplate(model.chat_template, bos_token=model.bos_text, eos_token=model.eos_text)
        self._chat_tokens = ChatTokenizer(
            model.special_texts,
            plain=lambda text: model.tokenize(text, add_special=False, parse_special=False),
            parsed=lambda text, add_special: model.tokenize(text, add_special=add_special, parse_special=True),
            bos=llama_cpp.llama_vocab_bos(model.vocab) if model.add_bos else None,
        )
        self.engine = Engine(model, config, publish, on_failure)
        self._matchers = matchers(model)
        fmt = formats.resolve(config.tool_parser, model.chat_template)
        # Call markers the vocabulary holds as special tokens: forced grammars name them by id, and a
        # request with tools sees those whose piece is empty (control tokens) as text, for its parser.
        markers = formats.markers(fmt) if fmt is not None else ()
        tool_tokens = {m: model.special_texts[m] for m in markers if m in model.special_texts}
        self._shown = {t: m.encode() for m, t in tool_tokens.items() if not model.pieces[t]} or None
        self.info = ModelInfo(
            name, "llamacpp", model.max_model_len, model.quantization, model.max_token_bytes, fmt and fmt.value,
            tuple(tool_tokens.items()), model.n_embd,
        )  # fmt: skip
        self.capabilities = Capabilities(SAMPLING_PARAMS, max_n=config.max_seqs, tools=fmt is not None)
        self._arrivals = itertools.count()

    def submit(self, request_id: str, request: GenerateRequest) -> None:
        if request.adapter is not None and request.adapter not in self.model.loras.names:
            raise InvalidRequest(f"model `{self.info.name}` has no LoRA adapter {request.adapter!r}", param="model")
        prompt = self._prompt_ids(request)
        max_tokens = output_budget(request, len(prompt), self.model.max_model_len)
        check_sampling(request.sampling, max_seqs=self._config.max_seqs, n_vocab=self.model.n_vocab)
        arrival = next(self._arrivals)
        # A beam search starts from one sequence and forks its beams; sampling runs one per choice.
        count = 1 if request.sampling.use_beam_search else request.sampling.n
        structured = request.sampling.structured_output
        seqs = [
            Sequence(
                request_id, i, list(prompt), request.sampling, max_tokens, arrival, OutputText(request.sampling.stop),
                matcher=self._matchers.matcher(structured) if structured is not None else None,
                cache_salt=(request.cache_salt or "").encode(), adapter=request.adapter,
                shown=self._shown if request.tools and request.tools.choice is not ToolChoice.NONE else None,
            )
            for i in range(count)
        ]  # fmt: skip
        self.engine.add(Request(request_id, seqs))

    def _prompt_ids(self, request: GenerateRequest, *, add_generation_prompt: bool = True) -> list[int]:
        model = self.model
        if request.prompt_token_ids is not None:
            ids = list(request.prompt_token_ids)
            check_token_ids(ids, model.n_vocab, "prompt")
        elif request.messages is not None:
            text = self._template.render(
                request.messages, tools=tool_list(request), add_generation_prompt=add_generation_prompt
            )
            # A template that writes BOS itself must not get a second one from the tokenizer.
            add_special = not (model.add_bos and model.bos_text and text.startswith(model.bos_text))
            # Client text is text: special-token strings in it are not parsed (backends/chat_tokens.py).
            ids = self._chat_tokens.tokenize(text, client_texts(request), add_special=add_special)
        else:
            assert request.prompt is not None
            ids = model.tokenize(request.prompt, add_special=True, parse_special=True)
        if not ids:
            raise InvalidRequest("the prompt is empty", param="prompt" if request.messages is None else "messages")
        return ids

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return self.model.tokenize(text, add_special=add_special, parse_special=True)

    def tokenize_request(self, request: TokenizeRequest) -> Tokenized:
        """See ``Backend.tokenize_request``: chat messages go through the generation's own prompt path."""
        if request.messages is not None:
            chat = request.chat_request(self.info.name)
            ids = self._prompt_ids(chat, add_generation_prompt=request.add_generation_prompt)
        else:
            assert request.prompt is not None
            ids = self.model.tokenize(request.prompt, add_special=request.add_special, parse_special=True)
        strings = tuple(self.model.token_text(t) for t in ids) if request.token_strings else None
        return Tokenized(tuple(ids), strings)

    def detokenize(self, token_ids: list[int]) -> str:
        check_token_ids(token_ids, self.model.n_vocab, "tokens")
        return self.model.detokenize(token_ids)

    def embed(self, request: EmbedRequest, reply: Callable[[Embeddings | BaseException], None]) -> None:
        """Token ids of each input (text as a prompt: BOS as the model adds it, special-token text kept as
        text), checked against the vocabulary and the context, then queued on the engine."""
        model, inputs = self.model, []
        for i, item in enumerate(request.inputs):
            if isinstance(item, str):
                ids = model.tokenize(item, add_special=True, parse_special=False)
            else:
                ids = list(item)
                check_token_ids(ids, model.n_vocab, "input")
            if not ids:
                raise InvalidRequest(f"input: input {i} has no tokens", param="input")
            if len(ids) > model.max_model_len:
                raise InvalidRequest(
                    f"input: input {i} has {len(ids)} tokens, more than this model's maximum context length of "
                    f"{model.max_model_len} tokens: shorten or split it",
                    param="input",
                    code="context_length_exceeded",
                )
            inputs.append(ids)
        self.engine.embed(EmbedJob(inputs, reply))

    def close(self) -> None:
        self.engine.stop()
