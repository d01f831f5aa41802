"""A request against a model's limits: the context length, the vocabulary, the batch.

Every engine backend asks the same questions before it queues a request, and answers them with
the same OpenAI-shaped errors (``context_length_exceeded`` like OpenAI and vLLM).
"""

from __future__ import annotations

from collections.abc import Iterable

from lmgate.backends.errors import InvalidRequest
from lmgate.backends.types import GenerateRequest, SamplingParams

MAX_LOGPROBS = 20


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


def check_token_ids(ids: Iterable[int], n_vocab: int, param: str) -> None:
    """Raises ``InvalidRequest`` naming ``param`` for the first id outside ``0..n_vocab-1``."""
    for token in ids:
        if not 0 <= token < n_vocab:
            raise InvalidRequest(f"token id {token} is outside the vocabulary (0..{n_vocab - 1})", param=param)


def check_sampling(sampling: SamplingParams, *, max_seqs: int, n_vocab: int) -> None:
    """What an engine that decodes ``max_seqs`` rows at once over ``n_vocab`` tokens can do with
    ``sampling``: choices and beams that fit the batch, logprobs within bounds, ids in the vocabulary."""
    if sampling.n > max_seqs:
        raise InvalidRequest(f"n={sampling.n} is more than this model decodes at once (max_seqs={max_seqs})", param="n")
    if sampling.use_beam_search:
        if sampling.beam_width > max_seqs:
            raise InvalidRequest(
                f"beam width {sampling.beam_width} is more than this model decodes at once (max_seqs={max_seqs})",
                param="best_of",
            )
        if sampling.logprobs is not None:
            raise InvalidRequest("logprobs are not returned with beam search", param="logprobs")
    elif sampling.best_of is not None and sampling.best_of != sampling.n:
        raise InvalidRequest("best_of different from n needs use_beam_search", param="best_of")
    if sampling.logprobs is not None and sampling.logprobs > MAX_LOGPROBS:
        raise InvalidRequest(f"at most {MAX_LOGPROBS} top logprobs, got {sampling.logprobs}", param="logprobs")
    check_token_ids((t for t, _ in sampling.logit_bias), n_vocab, "logit_bias")
    check_token_ids(sampling.stop_token_ids, n_vocab, "stop_token_ids")
