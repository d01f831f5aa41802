"""Structured outputs on the CPU engine: llguidance matchers over the model's llama.cpp vocabulary.

A constrained sequence carries its own ``LLMatcher`` (``Matchers.matcher``, built when the request is
submitted on the engine process's command thread, never in a step). Before its token is sampled,
the matcher's mask of allowed tokens is written over that sequence's row of llama.cpp's logits
(masked ones become -inf), inside the batched step, so constrained and free sequences decode in one
``llama_decode``; after, the token is fed to the matcher (backends/structured_output.py).
"""

from __future__ import annotations

import llguidance
import llguidance.llamacpp
import numpy as np
import numpy.typing as npt

from lmgate.backends.llamacpp.llama_model import LlamaModel
from lmgate.backends.structured_output import Matchers, allowed


def matchers(model: LlamaModel) -> Matchers:
    """The model's constraint compiler. Every end-of-generation token ends a constrained choice, as
    it ends a free one."""

    def vocabulary() -> llguidance.LLTokenizer:  # about a second for a 150k vocabulary: built once
        return llguidance.llamacpp.lltokenizer_from_vocab(model.vocab, n_vocab=model.n_vocab,
                                                          eos_token=sorted(model.eog_ids))  # fmt: skip

    return Matchers(vocabulary)


def mask_logits(matcher: llguidance.LLMatcher, logits: npt.NDArray[np.float32]) -> None:
    """Set the logits of every token ``matcher`` does not allow next to -inf, in place."""
    logits[~allowed(matcher, logits.shape[0])] = -np.inf
