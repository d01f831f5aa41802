"""What the gateway and an engine process say to each other, one pickled object a message.

Both ends are the same installed lmgate, so the messages are plain frozen dataclasses sent with
``multiprocessing.connection`` (length-prefixed pickle over a socket pair): no schema to keep in
step, and one message per engine step carries every request's new deltas (``Step``).

Gateway → engine: ``Load`` once, then ``Submit``, ``Abort``, ``Call`` in any order, ``Stop`` last.
Engine → gateway: ``Ready`` or ``LoadFailed`` once, then ``Step``, ``Rejected``, ``Reply``; ``Failed``
just before an engine that broke exits.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from lmgate.backends.errors import BackendUnavailable, InvalidRequest, ModelLoadError
from lmgate.backends.types import BackendStats, Capabilities, GenerateRequest, ModelInfo, TokenDelta


class ErrorKind(enum.StrEnum):
    INVALID = "invalid"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A backend error crossing the process boundary (exceptions with keyword fields do not pickle)."""

    kind: ErrorKind
    message: str
    param: str | None = None
    code: str | None = None

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        if isinstance(exc, InvalidRequest):
            return cls(ErrorKind.INVALID, exc.message, exc.param, exc.code)
        return cls(ErrorKind.UNAVAILABLE, str(exc) or type(exc).__name__)

    def exception(self) -> InvalidRequest | BackendUnavailable:
        if self.kind is ErrorKind.INVALID:
            return InvalidRequest(self.message, param=self.param, code=self.code)
        return BackendUnavailable(self.message)


# --- gateway → engine process ---


@dataclass(frozen=True, slots=True)
class Load:
    kind: str
    name: str
    config: Any
    """The model's pydantic config (LlamaCppConfig, TransformersConfig)."""


@dataclass(frozen=True, slots=True)
class Submit:
    request_id: str
    request: GenerateRequest


@dataclass(frozen=True, slots=True)
class Abort:
    request_id: str


class Method(enum.StrEnum):
    TOKENIZE = "tokenize"
    TOKENIZE_REQUEST = "tokenize_request"
    DETOKENIZE = "detokenize"
    EMBED = "embed"
    """Answered from the engine thread once the embeddings are computed (its other calls at once)."""


@dataclass(frozen=True, slots=True)
class Call:
    call_id: int
    method: Method
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Stop:
    pass


# --- engine process → gateway ---


@dataclass(frozen=True, slots=True)
class Ready:
    info: ModelInfo
    capabilities: Capabilities


@dataclass(frozen=True, slots=True)
class LoadFailed:
    message: str
    permanent: bool
    """The model cannot load as configured (missing, corrupt, too big, unsafe build): retrying won't help."""

    def exception(self) -> BackendUnavailable:
        return ModelLoadError(self.message) if self.permanent else BackendUnavailable(self.message)


@dataclass(frozen=True, slots=True)
class Step:
    """One engine step: every request's new deltas (possibly none) and the engine's stats after it."""

    outputs: dict[str, list[TokenDelta]]
    stats: BackendStats


@dataclass(frozen=True, slots=True)
class Rejected:
    """A submitted request the engine refused before its first delta."""

    request_id: str
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class Reply:
    call_id: int
    value: Any = None
    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The engine broke (an exception in a step); the process exits right after sending this."""

    message: str


ToEngine = Load | Submit | Abort | Call | Stop
FromEngine = Ready | LoadFailed | Step | Rejected | Reply | Failed
