"""The value rules of a request, written once and applied by both transports (STYLE 13).

HTTP applies the bounds through its pydantic models (``Bounds.field()`` gives their ``Field``
arguments, so the OpenAPI schema shows them) and calls the other rules from its validators; gRPC
calls everything here from its converter (backends/grpc/convert.py). The words are pydantic's, so
a client reads the same error over either transport. What depends on the model (its context, its
vocabulary, how many sequences it decodes at once) is checked later, by the engine
(backends/engine/limits.py) or the dispatcher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

MAX_N = 128
"""Choices (n, best_of, and prompts x n) one request may ask for."""
MAX_STOP = 16
COMPLETION_MAX_TOKENS = 16
"""The legacy completions API's default ``max_tokens`` (chat's is the rest of the context)."""
MAX_LOGPROBS = 20
"""Top alternatives returned per token, as OpenAI caps them."""
UINT32_MAX = 2**32 - 1
TOKEN_ID_END = 2**31
"""Token ids fit the proto's uint32 and every engine's int32: 0 <= id < 2^31."""


def _number(value: float) -> str:
    """A bound as pydantic writes it: 2.0 as ``2``."""
    return str(int(value)) if float(value).is_integer() else str(value)


class FieldBounds(TypedDict, total=False):
    """The ``pydantic.Field`` keyword arguments of a range (typed, so ``Field(**bounds)`` is checked)."""

    ge: float
    gt: float
    le: float
    lt: float


@dataclass(frozen=True, slots=True)
class Bounds:
    """A numeric range; a None side is open."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def field(self) -> FieldBounds:
        """The ``pydantic.Field`` arguments for this range."""
        bounds = FieldBounds()
        if self.ge is not None:
            bounds["ge"] = self.ge
        if self.gt is not None:
            bounds["gt"] = self.gt
        if self.le is not None:
            bounds["le"] = self.le
        if self.lt is not None:
            bounds["lt"] = self.lt
        return bounds

    def problem(self, value: float) -> str | None:
        """What is wrong with ``value``, in pydantic's words; None when it is in range."""
        if self.ge is not None and value < self.ge:
            return f"Input should be greater than or equal to {_number(self.ge)}"
        if self.gt is not None and value <= self.gt:
            return f"Input should be greater than {_number(self.gt)}"
        if self.le is not None and value > self.le:
            return f"Input should be less than or equal to {_number(self.le)}"
        if self.lt is not None and value >= self.lt:
            return f"Input should be less than {_number(self.lt)}"
        return None


BOUNDS: dict[str, Bounds] = {
    "temperature": Bounds(ge=0.0, le=2.0),
    "top_p": Bounds(gt=0.0, le=1.0),
    "top_k": Bounds(ge=-1, lt=2**31),
    "min_p": Bounds(ge=0.0, le=1.0),
    "n": Bounds(ge=1, le=MAX_N),
    "max_tokens": Bounds(ge=1, le=UINT32_MAX),
    "presence_penalty": Bounds(ge=-2.0, le=2.0),
    "frequency_penalty": Bounds(ge=-2.0, le=2.0),
    "repetition_penalty": Bounds(gt=0.0, le=10.0),
    "seed": Bounds(ge=-(2**63), lt=2**63),
    "best_of": Bounds(ge=1, le=MAX_N),
    "length_penalty": Bounds(ge=-10.0, le=10.0),
}
"""The ranges of the scalar sampling parameters."""
LOGPROBS = Bounds(ge=0, le=MAX_LOGPROBS)
"""Chat's ``top_logprobs``, completions' ``logprobs``."""
LOGIT_BIAS = Bounds(ge=-100.0, le=100.0)
TOKEN_ID = Bounds(ge=0, lt=TOKEN_ID_END)


def stop_problem(stops: Sequence[str]) -> str | None:
    if len(stops) > MAX_STOP:
        return f"at most {MAX_STOP} stop sequences, got {len(stops)}"
    if any(s == "" for s in stops):
        return "stop sequences must not be empty"
    return None


def logit_bias_key_problem(key: str) -> str | None:
    """``logit_bias`` keys are token ids written as strings (JSON object keys)."""
    if not (key.isascii() and key.isdigit() and len(key) <= 10) or int(key) >= TOKEN_ID_END:
        return f"keys must be token ids (integers from 0 to 2^31-1) written as strings, got {key!r}"
    return None


def best_of_problem(n: int, best_of: int | None, use_beam_search: bool) -> str | None:
    """``best_of`` is the beam width: at least ``n``, and other than ``n`` only with beam search."""
    if best_of is not None and best_of < n:
        return f"best_of ({best_of}) must be at least n ({n})"
    if best_of not in (None, n) and not use_beam_search:
        return "best_of different from n is only supported with use_beam_search"
    return None


CACHE_SALT_CHARS = 128


def cache_salt_problem(salt: str) -> str | None:
    """``cache_salt`` (vLLM's): 1 to 128 characters."""
    if not salt:
        return "String should have at least 1 character"
    if len(salt) > CACHE_SALT_CHARS:
        return f"String should have at most {CACHE_SALT_CHARS} characters"
    return None


def choices_problem(prompts: int, n: int) -> str | None:
    choices = prompts * n
    if choices > MAX_N:
        return (
            f"one request may ask for at most {MAX_N} choices (prompts x n); this one asks for {choices}: "
            "send the prompts in several requests"
        )
    return None
