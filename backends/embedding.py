"""Embeddings: the request and the result every backend speaks, and the rules on their values.

An ``EmbedRequest`` carries one or more inputs, each text or token ids (OpenAI's ``input``: a
string, a list of strings, a list of token ids or a list of such lists). A backend answers with one
vector per input, L2-normalised (OpenAI's embeddings have unit length), in input order, and the
prompt tokens it read. ``dimensions`` is the gateway's business (``shorten``): backends always
return the model's full vectors.

The rules on the values (``inputs_problem``), checked at both edges (HTTP and gRPC) before anything
reaches a backend: at least one input and at most ``MAX_EMBED_INPUTS``; no empty input; token ids
non-negative. A model's vocabulary and context are its backend's to check (llamacpp/host.py), before
any native code runs. The type trusts what it is given, as backends/types.py's do.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from lmgate.backends.errors import InvalidRequest

MAX_EMBED_INPUTS = 2048
"""Inputs one request may carry at most (OpenAI's own cap)."""


EmbedInput = str | tuple[int, ...]
"""One input: text (special tokens in it are not parsed) or token ids."""


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    request_id: str
    model: str
    inputs: tuple[EmbedInput, ...]
    dimensions: int | None = None
    """Wanted vector length (None: the model's); applied by the gateway (``shorten``), not a backend."""

    @property
    def token_estimate(self) -> int:
        """Tokens before tokenizing: token ids as they are, text at 4 bytes a token (admission, quotas)."""
        return sum(len(i) if isinstance(i, tuple) else len(i.encode()) // 4 + 1 for i in self.inputs)


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One unit-length float32 vector per input, in input order, and the tokens read."""

    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int


def inputs_problem(inputs: tuple[EmbedInput, ...]) -> str | None:
    """What is wrong with ``inputs`` as a request's ``input`` (the field named by the caller), or None:
    an empty list, more than ``MAX_EMBED_INPUTS``, an empty input, a negative token id."""
    if not inputs:
        return "at least one input is required"
    if len(inputs) > MAX_EMBED_INPUTS:
        return f"at most {MAX_EMBED_INPUTS} inputs per request (got {len(inputs)}): split the request"
    for i, item in enumerate(inputs):
        if len(item) == 0:
            return f"input {i} is empty: every input needs at least one token"
        if isinstance(item, tuple) and min(item) < 0:
            return f"input {i} has a negative token id ({min(item)})"
    return None


def normalized(vector: np.ndarray) -> tuple[float, ...]:
    """``vector`` scaled to unit length (a zero vector stays zero), as float32 values."""
    v = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(v.astype(np.float64)))
    out = v / np.float32(norm) if norm > 0 else v
    return tuple(float(x) for x in out)


def shorten(vector: tuple[float, ...], dimensions: int | None) -> tuple[float, ...]:
    """The first ``dimensions`` values, renormalised (Matryoshka truncation, as OpenAI's ``dimensions``
    does for text-embedding-3); ``vector`` itself when None or its own length."""
    if dimensions is None or dimensions == len(vector):
        return vector
    return normalized(np.asarray(vector[:dimensions], dtype=np.float32))


def check_dimensions(dimensions: int | None, size: int, *, truncatable: bool, model: str) -> None:
    """Refuse a ``dimensions`` this model cannot give: its own size is always fine; a smaller one only
    when the model entry says its vectors may be truncated (``embed_truncatable``)."""
    if dimensions is None or dimensions == size:
        return
    if dimensions > size or not truncatable:
        allowed = f"1 to {size}" if truncatable else f"only its own size, {size}"
        raise InvalidRequest(
            f"dimensions: model {model!r} gives {allowed} (got {dimensions})"
            + ("" if truncatable else "; its entry does not set embed_truncatable (Matryoshka-trained models)"),
            param="dimensions",
        )


def to_base64(vector: tuple[float, ...]) -> str:
    """The vector as OpenAI's ``encoding_format: base64`` sends it: little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
