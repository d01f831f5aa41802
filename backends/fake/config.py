"""Settings of the fake backend (gateway tests)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, PositiveInt

from lmgate.backends.tasks import TasksConfig


class FakeConfig(TasksConfig):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["fake"] = "fake"
    context_length: PositiveInt = Field(default=2048, description="The context length it reports.")
    embedding_size: PositiveInt = Field(default=16, le=4096, description="The length of its embedding vectors.")
    max_n: PositiveInt = Field(default=8, description="The most choices (`n`) a request may ask for.")
    token_delay_s: float = Field(default=0.0, ge=0.0, description="Pause before each token, to keep streams open.")
    stall_after: int | None = Field(
        default=None, ge=0, description="After this many tokens a choice waits until it is closed (a hung engine)."
    )
