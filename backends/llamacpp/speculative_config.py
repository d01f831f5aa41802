"""Speculative decoding settings of a llama.cpp model (docs/speculative.md).

Pure pydantic, no llama_cpp import, like config.py which embeds it as ``speculative``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

SpeculativeMethod = Literal["none", "ngram", "draft"]


class SpeculativeConfig(BaseModel):
    """How draft tokens are proposed, and when a step verifies them.

    Every emitted token is still sampled from the model's own distribution (the draft only says which
    positions to compute ahead), so the output is exactly the output without speculation.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: SpeculativeMethod = Field(
        default="none",
        description="none: off; ngram: prompt lookup (the tokens that followed the latest earlier occurrence of the "
        "sequence's last n tokens, in its prompt or output); draft: a smaller GGUF with the same vocabulary "
        "(draft_model) proposes greedily.",
    )
    num_draft: PositiveInt = Field(default=4, le=16, description="Draft tokens verified per sequence and step at most.")
    ngram_min: PositiveInt = Field(default=1, le=16, description="ngram: the shortest suffix matched.")
    ngram_max: PositiveInt = Field(default=3, le=16, description="ngram: the longest suffix matched (tried first).")
    draft_model: Path | None = Field(
        default=None,
        description="draft: the draft model's GGUF (its vocabulary must be the model's); a relative path is relative "
        "to the config file's directory.",
    )
    draft_p_min: float = Field(
        default=0.4,
        ge=0.0,
        lt=1.0,
        description="draft: a draft ends after a token the draft model gave a probability below this (0: always "
        "num_draft tokens); Hugging Face's assisted generation stops its drafts the same way, at 0.4.",
    )
    max_batch: PositiveInt = Field(
        default=4,
        le=128,
        description="Speculate only while at most this many sequences decode: on a CPU, verifying drafts costs "
        "compute that a larger batch already uses. With a KV stream per sequence (kv_unified), 1: llama.cpp "
        "would evaluate each drafting sequence's tokens apart.",
    )

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @model_validator(mode="after")
    def _consistent(self) -> SpeculativeConfig:
        if self.ngram_min > self.ngram_max:
            raise ValueError(
                f"ngram_min={self.ngram_min} is above ngram_max={self.ngram_max}: set ngram_min <= ngram_max"
            )
        if self.method == "draft" and self.draft_model is None:
            raise ValueError("method draft needs draft_model: the path of a GGUF with the model's vocabulary")
        if self.method != "draft" and self.draft_model is not None:
            raise ValueError(f"draft_model is only used with method draft (method is {self.method})")
        if self.method != "draft" and "draft_p_min" in self.model_fields_set:
            raise ValueError(f"draft_p_min is only used with method draft (method is {self.method})")
        return self
