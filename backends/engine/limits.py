"""A request against a model's limits: the context length, the vocabulary, the batch.

Every engine backend asks the same questions before it queues a request, and answers them with
the same OpenAI-shaped errors (``context_length_exceeded`` like OpenAI and vLLM).
"""

from __future__ import annotations

from collections.abc import Iterable

from lmgate.backends.errors import InvalidRequest
from lmgate.backends.types import GenerateRequest, SamplingParams


def output_budget(request: GenerateRequest, prompt_len: int, max_model_len: int) -> int:
    """The output tokens each choice may produce: ``max_tokens``, or what is left of the context.

    Raises ``InvalidRequest`` when the prompt plus ``max_tokens`` (at least one) exceed ``max_model_len``.
    """
    wanted = request.sampling.max_tokens
    if prompt_len + (wanted or 1) > max_model_len:
        where = "messages" if request.messages is not None else "prompt"
        asked = f"{prompt_len + (wanted or 0)} tokens ({prompt_len} in the {where}, {wanted or 0} in the completion)"
        raise InvalidRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested {asked}. "
            f"Please reduce the length of the {where} or completion.",
            param=where if wanted is None or prompt_len >= max_model_len else "max_tokens",
            code="context_length_exceeded",
        )
    return wanted if wanted is not None else max_model_len - prompt_len


def check_prompt_size(request: GenerateRequest, max_model_len: int, max_token_bytes: int | None) -> None:
    """Refuse, before any tokenizing, a prompt that cannot fit the context whatever its tokens.

    A token-id prompt is measured as it is. A text prompt of ``c`` characters has at least ``c``
    bytes, so at least ``c / max_token_bytes`` tokens when no token of the vocabulary covers more
    than ``max_token_bytes`` bytes (None: the tokenizer may shrink text, as normalising ones do, so
    no bound holds). Raises ``InvalidRequest`` (``context_length_exceeded``); an exact count is the
    engine's, once the prompt passed this cheap test.
    """
    if request.prompt_token_ids is not None:
        at_least, unit = len(request.prompt_token_ids), ""
    elif max_token_bytes is None:
        return
    else:
        texts = [request.prompt] if request.prompt is not None else [m.content for m in request.messages or ()]
        chars = sum(map(len, texts))
        at_least = -(-chars // max_token_bytes)
        unit = f" ({chars} characters, and no token of this model covers more than {max_token_bytes} bytes)"
    if at_least + 1 > max_model_len:
        where = "messages" if request.messages is not None else "prompt"
        raise InvalidRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, the {where} alone "
            f"{'have' if where == 'messages' else 'has'} {'at least ' if unit else ''}{at_least} tokens{unit}. "
            f"Please reduce the length of the {where}.",
            param=where,
            code="context_length_exceeded",
        )


def check_token_ids(ids: Iterable[int], n_vocab: int, param: str) -> None:
    """Raises ``InvalidRequest`` naming ``param`` for the first id outside ``0..n_vocab-1``."""
    for token in ids:
        if not 0 <= token < n_vocab:
            raise InvalidRequest(f"token id {token} is outside the vocabulary (0..{n_vocab - 1})", param=param)


def check_sampling(sampling: SamplingParams, *, max_seqs: int, n_vocab: int) -> None:
    """What an engine that decodes ``max_seqs`` rows at once over ``n_vocab`` tokens can do with
    ``sampling``: beams that fit the batch, no logprobs with beam search, ids in the vocabulary.

    The value rules (ranges, best_of against n, at most 20 logprobs) were checked by the transport
    (backends/sampling_rules.py), and n against the batch by the dispatcher (``Capabilities.max_n``).
    """
    if sampling.use_beam_search:
        if sampling.beam_width > max_seqs:
            raise InvalidRequest(
                f"beam width {sampling.beam_width} is more than this model decodes at once (max_seqs={max_seqs})",
                param="best_of",
            )
        if sampling.logprobs is not None:
            raise InvalidRequest("logprobs are not returned with beam search", param="logprobs")
        if sampling.structured_output is not None:
            raise InvalidRequest("structured outputs are not decoded with beam search", param="use_beam_search")
    if sampling.structured_output is not None and sampling.ignore_eos:
        # A finished structure allows only the end of generation, which ignore_eos bans.
        raise InvalidRequest("ignore_eos cannot be combined with a structured output", param="ignore_eos")
    check_token_ids((t for t, _ in sampling.logit_bias), n_vocab, "logit_bias")
    check_token_ids(sampling.stop_token_ids, n_vocab, "stop_token_ids")
