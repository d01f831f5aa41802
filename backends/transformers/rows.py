"""The transformers engine's state: a request, and the rows of the batch it owns.

A sampled choice is a ``Row`` (its own sampler, detokenizer and stop-string buffer); a beam of a
beam search is a ``BeamRow`` (tokens only: text is made once, for the best hypotheses). Both sit
in the engine's running list in the order of the ``BatchCache`` rows. Owned by the engine thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lmgate.backends.engine.beam_search import Beam, BeamSearch
from lmgate.backends.engine.output_text import OutputText
from lmgate.backends.transformers.detokenizer import Detokenizer
from lmgate.backends.transformers.sampler import RowSampler
from lmgate.backends.types import FinishReason, SamplingParams, Usage

if TYPE_CHECKING:
    from llguidance import LLMatcher


@dataclass(eq=False)
class Request:
    request_id: str
    prompt: list[int]
    sampling: SamplingParams
    max_tokens: int
    rows: list[Row] = field(default_factory=list)
    """One per sampled choice, made at admission (none while waiting, none for a beam search)."""
    matchers: list[LLMatcher] = field(default_factory=list)
    """One per choice when the output is structured, compiled when the request was submitted."""
    search: BeamSearch[None] | None = None
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    unfinished: int = field(init=False)
    """Choices without a finish reason yet."""

    def __post_init__(self) -> None:
        self.unfinished = self.sampling.n

    @property
    def rows_needed(self) -> int:
        """Batch rows this request occupies at most: its beams, or one per choice."""
        return self.sampling.beam_width or self.sampling.n

    def usage(self, completion_tokens: int) -> Usage:
        queued = None if self.started_at is None else self.started_at - self.queued_at
        return Usage(len(self.prompt), completion_tokens, 0, queued)


@dataclass(eq=False)
class Row:
    """One sampled choice."""

    request: Request
    index: int
    tokens: list[int]
    """Prompt and output so far; the last one is fed to the model at the next decode."""
    sampler: RowSampler
    detokenizer: Detokenizer
    output: OutputText
    finish: FinishReason | None = None

    @property
    def num_output(self) -> int:
        return len(self.tokens) - len(self.request.prompt)


@dataclass(eq=False)
class BeamRow:
    """One live beam of a request's beam search."""

    request: Request
    beam: Beam[None]
    tokens: list[int]
    finish: FinishReason | None = None
