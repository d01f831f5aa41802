"""Structured outputs on the CPU engine: llguidance matchers over the model's vocabulary.

A constrained sequence carries its own ``LLMatcher``. Before its token is sampled, the matcher's
mask of allowed tokens is written over that sequence's logits (masked ones become -inf), inside
the batched step, so constrained and free sequences decode in one ``llama_decode``; after, the
token is fed to the matcher. Compiling happens in ``Grammars.matcher``, on the thread that submits
requests, never on the engine thread's step; compiled matchers are cached per constraint and each
sequence gets a copy (``deep_copy`` is cheap: the compiled grammar is shared).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import llguidance
import llguidance.llamacpp
import numpy as np

from lmgate.backends import structured_output
from lmgate.backends.errors import InvalidRequest
from lmgate.backends.llamacpp.llama_model import LlamaModel
from lmgate.backends.types import StructuredOutput

log = logging.getLogger(__name__)

CACHED_GRAMMARS = 32


class Grammars:
    """Compiled constraints of one model. ``matcher`` may be called from any one thread at a time."""

    def __init__(self, model: LlamaModel) -> None:
        self._model = model
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._compiled: OrderedDict[StructuredOutput, llguidance.LLMatcher] = OrderedDict()

    def matcher(self, structured: StructuredOutput) -> llguidance.LLMatcher:
        """A fresh matcher for one sequence; ``InvalidRequest`` if the constraint does not compile for
        this vocabulary (the edge has checked it for any vocabulary already)."""
        compiled = self._compiled.get(structured)
        if compiled is None:
            compiled = llguidance.LLMatcher(self._vocabulary(), structured_output.grammar(structured), log_level=0)
            if compiled.is_error():
                raise InvalidRequest(f"structured output: {compiled.get_error()[:500]}", param="response_format")
            self._compiled[structured] = compiled
            if len(self._compiled) > CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(structured)
        return compiled.deep_copy()

    def _vocabulary(self) -> llguidance.LLTokenizer:
        """llguidance's view of the vocabulary, built once (about a second for a 150k vocabulary).
        Every end-of-generation token ends a constrained choice, as it ends a free one."""
        if self._tokenizer is None:
            model = self._model
            self._tokenizer = llguidance.llamacpp.lltokenizer_from_vocab(
                model.vocab, n_vocab=model.n_vocab, eos_token=sorted(model.eog_ids)
            )
        return self._tokenizer


def mask_logits(matcher: llguidance.LLMatcher, logits: np.ndarray) -> None:
    """Set the logits of every token ``matcher`` does not allow next to -inf, in place."""
    words = np.empty((logits.shape[0] + 31) // 32, dtype=np.int32)
    matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
    allowed = np.unpackbits(words.view(np.uint8), bitorder="little")[: logits.shape[0]].astype(bool)
    logits[~allowed] = -np.inf


def consume(matcher: llguidance.LLMatcher, token: int) -> bool:
    """Feed the sampled ``token``; False if the matcher refused it. The mask allowed it, so it never
    should: if a bug ever made it, the caller drops the matcher and the choice goes on unconstrained
    rather than taking the engine down."""
    if matcher.consume_token(token):
        return True
    log.error("structured output: the matcher refused token %d: %s", token, matcher.get_error())
    return False
