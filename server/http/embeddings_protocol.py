"""Request and response models of HTTP ``POST /v1/embeddings``, in OpenAI's shapes.

    POST /v1/embeddings {"model", "input", "encoding_format": "float", "dimensions", "user"}
      -> {"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model",
          "usage": {"prompt_tokens", "total_tokens"}}

``input`` is a string, a list of strings, a list of token ids (one input) or a list of such lists,
as OpenAI takes it; the rules on it are backends/embedding.py's (``inputs_problem``), shared with
gRPC. ``encoding_format: base64`` sends each vector as the base64 of its little-endian float32 bytes
(what the openai SDK asks for by default, and decodes itself).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from lmgate.backends.embedding import EmbedInput, EmbedRequest, inputs_problem
from lmgate.backends.sampling_rules import TOKEN_ID
from lmgate.server.http.protocol import Text, unknown_field

InputParam = Text | list[StrictInt] | list[Text] | list[list[StrictInt]]
"""Token ids are checked in ``_check_input`` (naming the input), not per item by the union."""


def _inputs(value: InputParam) -> tuple[EmbedInput, ...]:
    """The inputs ``input`` holds: a string or a flat id list is one input."""
    if isinstance(value, str):
        return (value,)
    if value and all(isinstance(v, int) for v in value):
        return (tuple(v for v in value if isinstance(v, int)),)
    return tuple(v if isinstance(v, str) else tuple(v) for v in value if not isinstance(v, int))


class EmbeddingsBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: InputParam = Field(
        description="A string, a list of strings, a list of token ids, or a list of token-id lists "
        "(at most 2048 inputs, each within the model's context)."
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="`float`: lists of numbers; `base64`: little-endian float32 bytes, base64."
    )
    dimensions: int | None = Field(
        default=None,
        ge=1,
        description="Vector length: the model's own, or less where its entry sets embed_truncatable.",
    )
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: InputParam) -> InputParam:
        inputs = _inputs(value) if value != [] else ()
        if problem := inputs_problem(inputs):
            raise ValueError(problem)
        for i, item in enumerate(inputs):
            if isinstance(item, tuple) and (rule := next(filter(None, map(TOKEN_ID.problem, item)), None)):
                raise ValueError(f"input {i} has a token id out of range: {rule}")
        return value

    @model_validator(mode="after")
    def _refuse_unknown_fields(self) -> EmbeddingsBody:
        for name in self.model_extra or {}:
            raise ValueError(unknown_field(name))
        return self

    def internal(self, request_id: str) -> EmbedRequest:
        return EmbedRequest(request_id, self.model, _inputs(self.input), self.dimensions)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
