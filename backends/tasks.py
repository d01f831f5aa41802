"""What a model entry serves: generation, embeddings or both (its ``tasks`` setting).

Every backend kind's config inherits ``TasksConfig``; a kind says which tasks it can serve at all
(``SERVABLE``) and which a model entry gets when it does not say (``tasks``'s default). The gateway
refuses a request for a task its model does not serve before anything reaches a backend
(server/placement/embedding.py, server/placement/dispatch.py).
"""

from __future__ import annotations

import enum
from typing import ClassVar

from pydantic import BaseModel, Field, model_validator


class Task(enum.StrEnum):
    GENERATE = "generate"
    """Chat, completions, the Responses API (and their gRPC rpcs)."""
    EMBED = "embed"
    """/v1/embeddings and gRPC Embed."""


BOTH = (Task.GENERATE, Task.EMBED)


class TasksConfig(BaseModel):
    """Mixed into each kind's config: ``tasks`` and the check that the kind can serve them."""

    SERVABLE: ClassVar[frozenset[Task]] = frozenset(Task)
    WHY_NOT: ClassVar[str] = ""
    """Why a task outside ``SERVABLE`` is not (quoted in the error)."""

    tasks: tuple[Task, ...] = Field(
        default=BOTH,
        min_length=1,
        description="What the model serves: `generate` (chat, completions, responses), `embed` (embeddings) or "
        "both. A request for a task the model does not serve is a 400 naming `model`.",
    )

    embed_truncatable: bool = Field(
        default=False,
        description="Embeddings: a request's `dimensions` may be below the model's size (its vectors' first "
        "values, renormalised: Matryoshka-trained models). Off: only the model's own size is accepted.",
    )

    @model_validator(mode="after")
    def _servable(self) -> TasksConfig:
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: {list(map(str, self.tasks))} names a task twice")
        extra = [str(t) for t in self.tasks if t not in self.SERVABLE]
        if extra:
            raise ValueError(f"tasks: this backend kind does not serve {', '.join(extra)}{self.WHY_NOT}")
        return self

    def serves(self, task: Task) -> bool:
        return task in self.tasks
