"""The types every backend speaks: one request in, a stream of deltas out.

Frozen dataclasses, no pydantic and no protobuf: the HTTP and gRPC transports convert their own
shapes into ``GenerateRequest`` and encode ``TokenDelta`` back (DESIGN §2, §4). Validation of the
values a client sends happens at the edge; these types trust what they are given.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field


class FinishReason(enum.StrEnum):
    """Why a choice stopped, with the OpenAI names."""

    STOP = "stop"  # an EOS token, a stop string or a stop token id
    LENGTH = "length"  # max_tokens or the context length was reached
    ABORT = "abort"  # the client went away, a deadline passed or the server is stopping
    TOOL_CALLS = "tool_calls"  # the choice ended in function calls (TokenDelta.tool_calls)

    @classmethod
    def named(cls, name: str | None) -> FinishReason | None:
        """The reason an upstream (vLLM, an OpenAI-compatible server) names; None for none or one
        lmgate does not know."""
        try:
            return cls(name) if name else None
        except ValueError:
            return None


class Role(enum.StrEnum):
    """Chat roles a request may carry."""

    SYSTEM = "system"
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model made: in an assistant message of the history, or assembled from
    ``ToolCallDelta``s."""

    id: str
    name: str
    arguments: str
    """The arguments object as JSON text (what OpenAI's ``function.arguments`` carries)."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    """An assistant message's calls."""
    tool_call_id: str | None = None
    """A tool message: the call it answers."""
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call."""

    name: str
    description: str = ""
    parameters: str = '{"type": "object", "properties": {}}'
    """Its arguments' JSON Schema, as JSON text."""


class ToolChoice(enum.StrEnum):
    """OpenAI's ``tool_choice``."""

    NONE = "none"  # no calls: tools are still shown to the model, as OpenAI does
    AUTO = "auto"  # the model decides
    REQUIRED = "required"  # at least one call, enforced while decoding
    FUNCTION = "function"  # one call of ``Tools.function``, enforced while decoding


@dataclass(frozen=True, slots=True)
class Tools:
    """The functions of a chat request and how they may be called (checks are the edge's:
    backends/tools/rules.py)."""

    functions: tuple[Tool, ...]
    choice: ToolChoice = ToolChoice.AUTO
    function: str | None = None
    """The function ``ToolChoice.FUNCTION`` forces."""
    parallel: bool = True
    """More than one call in a turn."""

    @property
    def forced(self) -> bool:
        """A call is enforced by the grammar (``required`` or a named function)."""
        return self.choice in (ToolChoice.REQUIRED, ToolChoice.FUNCTION)


class StructureKind(enum.StrEnum):
    """What a structured output must be."""

    JSON = "json"  # any JSON object (OpenAI's json_object)
    JSON_SCHEMA = "json_schema"  # JSON valid against ``spec``, a JSON Schema written as JSON text
    REGEX = "regex"  # text matching ``spec``, a regular expression
    CHOICE = "choice"  # exactly one of the strings of ``spec``, a JSON list of strings
    GRAMMAR = "grammar"  # text of ``spec``, a Lark or GBNF grammar


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """A constraint on every choice's text, enforced token by token while decoding (the checks on
    ``spec`` are backends/structured_output.py's, made at the edge)."""

    kind: StructureKind
    spec: str = ""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How tokens are chosen and when a choice stops.

    ``temperature == 0`` means greedy. ``top_k == 0`` and ``top_p == 1`` and ``min_p == 0`` mean
    off. ``max_tokens=None`` means "until the context is full". ``logprobs=None`` returns no
    log-probabilities; an integer returns the chosen token's and that many top alternatives.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    n: int = 1
    use_beam_search: bool = False
    best_of: int | None = None
    """Beam width with ``use_beam_search`` (default ``n``); the ``n`` best beams are returned."""
    length_penalty: float = 1.0
    structured_output: StructuredOutput | None = None
    """Decode only text of this shape (None: any text)."""
    speculative: bool | None = None
    """Speculative decoding for this request where the model enables it (docs/speculative.md): None
    follows the model's config, False turns it off, True asks for it (still only where the model has a
    method configured). It never changes the output, only how fast it comes."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def choice_seed(self, index: int) -> int:
        """Choice ``index`` of a seeded request gets seed + index: reproducible, yet n choices differ.
        Unseeded, a fresh random 32-bit seed."""
        if self.seed is None:
            return random.getrandbits(32)
        return (self.seed + index) & 0xFFFFFFFF

    @property
    def beam_width(self) -> int:
        """Beams searched (0 without beam search)."""
        return max(self.n, self.best_of or self.n) if self.use_beam_search else 0


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One generation, from either transport.

    Exactly one of ``prompt`` (text), ``prompt_token_ids`` or ``messages`` (chat, rendered with
    the model's template by the backend) is set.
    """

    request_id: str
    model: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    messages: tuple[ChatMessage, ...] | None = None
    tools: Tools | None = None
    """Chat only: functions the model may call (rendered by the template, parsed from the output)."""
    cache_salt: str | None = None
    """Set by the gateway per tenant (server/tenancy/scope.py): prefix-cache entries are shared only
    between requests with the same salt. None: shared by every request without one."""
    adapter: str | None = None
    """The LoRA adapter (its configured name) the request runs with, set by the gateway when ``model``
    names one (server/placement/dispatch.py); None: the base model. Its prefix-cache entries are its own."""

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.prompt, self.prompt_token_ids, self.messages))
        if given != 1:
            raise ValueError("exactly one of prompt, prompt_token_ids and messages must be set")


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token_id: int
    token: str
    logprob: float
    bytes: bytes


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The chosen token's log-probability under the model and its top alternatives."""

    token_id: int
    token: str
    logprob: float
    bytes: bytes
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    queue_time_s: float | None = None
    """Seconds the request waited before its first engine step (None when the backend cannot tell)."""


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of one function call of a choice, as OpenAI streams it: the call's first delta has
    its ``id`` and ``name``; later ones add ``arguments`` text, which concatenates to the JSON object."""

    index: int
    """The call's position among the choice's calls."""
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """New output of one choice (``index``), in generation order.

    ``text`` may be empty while bytes of a multi-byte character or a possible stop string are held
    back. The last delta of a choice has ``finish_reason`` and ``usage`` (this choice's completion
    tokens; the prompt counted in every choice's usage alike).
    """

    index: int
    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    """Function-call pieces parsed from the output (``text`` is then the content around them)."""


STANDARD_SAMPLING_PARAMS = frozenset({
    "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
    "seed", "logit_bias", "max_tokens", "stop", "stop_token_ids", "ignore_eos", "logprobs", "n",
})  # fmt: skip
"""What the engines (llama.cpp, vLLM) honour; beam search (use_beam_search, best_of, length_penalty)
comes on top where an engine has it."""
BEAM_SEARCH_PARAMS = frozenset({"use_beam_search", "best_of", "length_penalty"})


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend honours; the router checks requests against it."""

    sampling_params: frozenset[str]
    max_n: int = 1
    tools: bool = False
    """Serves ``tools``: the engine's model has a known call format, or an upstream parses calls."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What /v1/models and ListModels show about a loaded model."""

    name: str
    backend: str
    context_length: int
    quantization: str | None = None
    max_token_bytes: int | None = None
    """The most bytes of text one token of the vocabulary covers, when tokenizing never shrinks
    text (byte-level BPE, SentencePiece without normalisation); None when unknown. Lets the gateway
    refuse a prompt too long for the context without tokenizing it (backends/engine/limits.py)."""
    tool_format: str | None = None
    """The format the model writes function calls in (a ``backends.tools.formats.ToolFormat``), for
    the engines whose output lmgate parses; None when it has none or its upstream parses."""
    tool_tokens: tuple[tuple[str, int], ...] = ()
    """The call format's markers that are single special tokens of the vocabulary, as (text, token id):
    the call grammars name them by id, as the model writes them (backends/tools/grammar.py)."""
    embedding_size: int | None = None
    """The length of its embedding vectors (None: it does not embed, or the backend cannot tell)."""


@dataclass(frozen=True, slots=True)
class BackendStats:
    """A point-in-time snapshot, safe to read from any thread."""

    running: int = 0
    waiting: int = 0
    kv_cells_used: int = 0
    """Cells held by requests in flight (cells that only cached prefixes hold are not counted)."""
    kv_cells_cached: int = 0
    """Cells holding cached prefixes no request uses: reused on a hit, evicted when needed."""
    kv_cells_total: int = 0
    prefix_queries: int = 0
    """Prompt tokens looked up in the prefix cache."""
    prefix_hits: int = 0
    """Of those, tokens found (their KV shared, not recomputed)."""
    preemptions: int = 0
    prefix_evictions: int = 0
    """Cached prefixes that left the KV cache (to make room, cold, or idle): dropped, or moved to host RAM."""
    prefix_host_bytes: int = 0
    """Host RAM held by cached prefixes moved out of the KV cache (llama.cpp's host tier: cache_ram_mib)."""
    steps: int = 0
    generated_tokens: int = 0
    spec_drafted_tokens: int = 0
    """Draft tokens proposed for speculative decoding and verified by the model."""
    spec_accepted_tokens: int = 0
    """Of those, tokens the model's own sampling agreed with (acceptance rate = accepted / drafted)."""
    engine_restarts: int = 0
    """Times the engine's process died and a new one was started (backends/engine/process_backend.py)."""

    @property
    def kv_usage(self) -> float:
        return self.kv_cells_used / self.kv_cells_total if self.kv_cells_total else 0.0
