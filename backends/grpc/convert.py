"""lmgate.v1 protobuf ⇄ the internal types (backends/types.py), both ways, for both ends of a call.

The gRPC servicer (server/grpc/servicer.py) reads requests with ``chat_from_pb`` /
``complete_from_pb`` and writes deltas with ``delta_to_pb``; the grpc backend, a gateway calling a
worker, writes requests with ``chat_to_pb`` / ``complete_to_pb`` and reads deltas with
``delta_from_pb``; embeddings go the same ways (``embed_from_pb`` / ``embeddings_to_pb`` in the servicer,
``embed_to_pb`` / ``embeddings_from_pb`` in the grpc backend). No other module knows the protobuf
shapes of these messages.

Requests are checked on the way in by the rules HTTP applies (backends/sampling_rules.py), in the
same words and the same order, and take the same defaults; unset ``optional`` fields stay unset,
as an omitted JSON field would. A bad value raises ``InvalidRequest`` naming its field in
``param``. float32 values are rounded to 6 digits, so that 0.7 arrives as 0.7.
"""

from __future__ import annotations

from typing import Any, TypeVar

from lmgate.backends import structured_output
from lmgate.backends.embedding import Embeddings, EmbedInput, EmbedRequest, inputs_problem
from lmgate.backends.errors import InvalidRequest, field_problem
from lmgate.backends.sampling_rules import (
    BOUNDS,
    COMPLETION_MAX_TOKENS,
    LOGIT_BIAS,
    LOGPROBS,
    TOKEN_ID,
    Bounds,
    best_of_problem,
    cache_salt_problem,
    logit_bias_key_problem,
    stop_problem,
)
from lmgate.backends.tools.rules import EMPTY_PARAMETERS, MAX_ID_CHARS, TOOLS_AND_FORMAT, tools_problem
from lmgate.backends.types import (
    ChatMessage,
    FinishReason,
    GenerateRequest,
    Role,
    SamplingParams,
    StructuredOutput,
    StructureKind,
    TokenDelta,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Tools,
    TopLogprob,
    Usage,
)
from lmgate.v1 import inference_pb2 as pb

ROLE_TO_PB = {Role.SYSTEM: pb.ROLE_SYSTEM, Role.USER: pb.ROLE_USER, Role.ASSISTANT: pb.ROLE_ASSISTANT,
              Role.DEVELOPER: pb.ROLE_DEVELOPER, Role.TOOL: pb.ROLE_TOOL}  # fmt: skip
ROLE_FROM_PB = {number: role for role, number in ROLE_TO_PB.items()}
FINISH_TO_PB = {FinishReason.STOP: pb.FINISH_REASON_STOP, FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
                FinishReason.ABORT: pb.FINISH_REASON_ABORT,
                FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS}  # fmt: skip
FINISH_FROM_PB = {number: reason for reason, number in FINISH_TO_PB.items()}
STRUCTURE_TO_PB = {StructureKind.JSON: pb.STRUCTURE_KIND_JSON, StructureKind.JSON_SCHEMA: pb.STRUCTURE_KIND_JSON_SCHEMA,
                   StructureKind.REGEX: pb.STRUCTURE_KIND_REGEX, StructureKind.CHOICE: pb.STRUCTURE_KIND_CHOICE,
                   StructureKind.GRAMMAR: pb.STRUCTURE_KIND_GRAMMAR}  # fmt: skip
STRUCTURE_FROM_PB = {number: kind for kind, number in STRUCTURE_TO_PB.items()}
CHOICE_TO_PB = {ToolChoice.NONE: pb.TOOL_CHOICE_MODE_NONE, ToolChoice.AUTO: pb.TOOL_CHOICE_MODE_AUTO,
                ToolChoice.REQUIRED: pb.TOOL_CHOICE_MODE_REQUIRED,
                ToolChoice.FUNCTION: pb.TOOL_CHOICE_MODE_FUNCTION}  # fmt: skip
CHOICE_FROM_PB = {number: choice for choice, number in CHOICE_TO_PB.items()}
_ROLE_RULE = "Input should be 'system', 'developer', 'user', 'assistant' or 'tool'"
ERROR_PARAM_KEY = "lmgate-error-param"
ERROR_CODE_KEY = "lmgate-error-code"
"""Trailing metadata of an error status: the request field at fault and the error's code
(``context_length_exceeded``…), as data, so that a gateway in front passes them on unparsed."""
Problem = tuple[str | None, str, object]
"""(field, rule, value) of one bad value."""


# --- requests, read by the servicer ---


def chat_from_pb(request: pb.ChatRequest, request_id: str) -> GenerateRequest:
    """Raises ``InvalidRequest`` naming the first bad field, as the HTTP API would."""
    sampling = request.sampling
    problems = _model_problems(request.model) + _sampling_problems(sampling) + _salt_problems(request)
    if not request.messages:
        problems.append(("messages", "List should have at least 1 item after validation, not 0", []))
    for i, message in enumerate(request.messages):
        if message.role not in ROLE_FROM_PB:
            problems.append((f"messages.{i}.role", _ROLE_RULE, "unspecified"))
        if message.role == pb.ROLE_TOOL and not message.tool_call_id:
            problems.append((f"messages.{i}", "a tool message needs the tool_call_id of the call it answers", None))
        if message.tool_calls and message.role != pb.ROLE_ASSISTANT:
            problems.append((f"messages.{i}", "only assistant messages carry tool_calls", None))
        ids = [message.tool_call_id, message.name, *(c.id for c in message.tool_calls)]
        if any(len(x) > MAX_ID_CHARS for x in ids):
            problems.append((f"messages.{i}", f"ids and names are at most {MAX_ID_CHARS} characters", None))
    logprobs = sampling.logprobs if sampling.HasField("logprobs") else None
    problems += _bounds_problem("top_logprobs", LOGPROBS, logprobs)
    problems += _structure_problems(sampling)
    _raise_first(problems)
    tools = _tools_from_pb(request)
    if tools is not None and tools.choice is not ToolChoice.NONE and sampling.HasField("structured_output"):
        raise InvalidRequest(field_problem("tool_choice", TOOLS_AND_FORMAT, None, quoted=False), param="tool_choice")
    messages = tuple(_message_from_pb(m) for m in request.messages)
    params = _sampling_from_pb(sampling, max_tokens=_optional(sampling, "max_tokens"), logprobs=logprobs)
    salt = _optional(request, "cache_salt")
    return GenerateRequest(request_id, request.model, params, messages=messages, tools=tools, cache_salt=salt)


def _message_from_pb(message: pb.ChatMessage) -> ChatMessage:
    calls = tuple(ToolCall(c.id, c.name, c.arguments) for c in message.tool_calls)
    return ChatMessage(ROLE_FROM_PB[message.role], message.content, calls, _optional(message, "tool_call_id"),
                       _optional(message, "name"))  # fmt: skip


def _tools_from_pb(request: pb.ChatRequest) -> Tools | None:
    """The request's tools, checked by the HTTP API's rules; None without tools."""
    choice = request.tool_choice
    mode = CHOICE_FROM_PB.get(choice.mode) if request.HasField("tool_choice") else None
    functions = tuple(Tool(t.name, t.description, t.parameters or EMPTY_PARAMETERS) for t in request.tools)
    if not functions:
        if mode in (ToolChoice.REQUIRED, ToolChoice.FUNCTION):
            raise InvalidRequest(field_problem("tool_choice", f"tool_choice {mode.value!r} needs tools", None,
                                               quoted=False), param="tool_choice")  # fmt: skip
        return None
    parallel = True if not request.HasField("parallel_tool_calls") else request.parallel_tool_calls
    tools = Tools(functions, mode or ToolChoice.AUTO, choice.function or None, parallel)
    if found := tools_problem(tools):
        param, rule = found
        raise InvalidRequest(field_problem(param, rule, None, quoted=False), param=param)
    return tools


def complete_from_pb(request: pb.CompleteRequest, request_id: str) -> GenerateRequest:
    """Raises ``InvalidRequest`` naming the first bad field, as the HTTP API would."""
    kind = request.WhichOneof("prompt")
    if kind is None:
        raise InvalidRequest("prompt: set text or token_ids", param="prompt")
    sampling = request.sampling
    problems = _model_problems(request.model) + _sampling_problems(sampling) + _salt_problems(request)
    ids = tuple(request.token_ids.ids)
    if kind == "token_ids" and not ids:
        problems.append(("prompt", "prompt must not be an empty list", []))
    problems += [(f"prompt.{i}", rule, t) for i, t in enumerate(ids) if (rule := TOKEN_ID.problem(t))]
    logprobs = sampling.logprobs if sampling.HasField("logprobs") else None
    problems += _bounds_problem("logprobs", LOGPROBS, logprobs)
    problems += _structure_problems(sampling)
    _raise_first(problems)
    max_tokens = _optional(sampling, "max_tokens") or COMPLETION_MAX_TOKENS
    params = _sampling_from_pb(sampling, max_tokens=max_tokens, logprobs=logprobs)
    salt = _optional(request, "cache_salt")
    if kind == "text":
        return GenerateRequest(request_id, request.model, params, prompt=request.text, cache_salt=salt)
    return GenerateRequest(request_id, request.model, params, prompt_token_ids=ids, cache_salt=salt)


def _optional(message: Any, name: str) -> Any:
    """An ``optional`` field's value (float32 rounded), or None when unset."""
    if not message.HasField(name):
        return None
    value = getattr(message, name)
    return round(value, 6) if isinstance(value, float) else value


def _model_problems(model: str) -> list[Problem]:
    return [] if model else [("model", "String should have at least 1 character", model)]


def _salt_problems(request: pb.ChatRequest | pb.CompleteRequest) -> list[Problem]:
    salt = _optional(request, "cache_salt")
    if salt is None:
        return []
    if rule := cache_salt_problem(salt):
        return [("cache_salt", rule, salt)]
    return []


def _bounds_problem(name: str, bounds: Bounds, value: float | None) -> list[Problem]:
    rule = None if value is None else bounds.problem(value)
    return [] if rule is None else [(name, rule, value)]


def _sampling_problems(sampling: pb.SamplingParams) -> list[Problem]:
    """Bad values of ``sampling``, in the order the HTTP models declare their fields."""

    def bounds(*names: str) -> list[Problem]:
        return [p for name in names for p in _bounds_problem(name, BOUNDS[name], _optional(sampling, name))]

    problems = bounds("temperature", "top_p", "top_k", "min_p", "n", "max_tokens")
    if rule := stop_problem(sampling.stop):
        problems.append(("stop", rule, list(sampling.stop)))
    problems += bounds("presence_penalty", "frequency_penalty", "repetition_penalty", "seed")
    problems += _logit_bias_problems(sampling)
    ids = sampling.stop_token_ids
    problems += [(f"stop_token_ids.{i}", rule, t) for i, t in enumerate(ids) if (rule := TOKEN_ID.problem(t))]
    return problems + bounds("best_of", "length_penalty")


def _logit_bias_problems(sampling: pb.SamplingParams) -> list[Problem]:
    bias = {str(token): round(value, 6) for token, value in sampling.logit_bias.items()}
    problems: list[Problem] = [(f"logit_bias.{k}", rule, v) for k, v in bias.items() if (rule := LOGIT_BIAS.problem(v))]
    if not problems:
        problems += [("logit_bias", rule, bias) for key in bias if (rule := logit_bias_key_problem(key))][:1]
    return problems


def _structure_problems(sampling: pb.SamplingParams) -> list[Problem]:
    if not sampling.HasField("structured_output"):
        return []
    given = sampling.structured_output
    if given.kind not in STRUCTURE_FROM_PB:
        return [("structured_output.kind", "set a kind (STRUCTURE_KIND_JSON, ...)", "unspecified")]
    rule = structured_output.problem(StructuredOutput(STRUCTURE_FROM_PB[given.kind], given.spec))
    return [] if rule is None else [("structured_output", rule, None)]


def _raise_first(problems: list[Problem]) -> None:
    if problems:
        param, rule, value = problems[0]
        quoted = value is not None
        raise InvalidRequest(field_problem(param, rule, value, quoted=quoted, more=len(problems) - 1), param=param)


def _sampling_from_pb(sampling: pb.SamplingParams, *, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
    """Checked values to ``SamplingParams``, with the HTTP API's defaults; raises ``InvalidRequest``
    for a rule across fields (best_of against n)."""
    n = _optional(sampling, "n") or 1
    best_of = _optional(sampling, "best_of")
    if rule := best_of_problem(n, best_of, sampling.use_beam_search):
        raise InvalidRequest(field_problem(None, rule, None, quoted=False))

    def given(name: str, default: Any) -> Any:
        value = _optional(sampling, name)
        return default if value is None else value

    return SamplingParams(
        temperature=given("temperature", 1.0),
        top_p=given("top_p", 1.0),
        top_k=max(0, given("top_k", 0)),
        min_p=given("min_p", 0.0),
        repetition_penalty=given("repetition_penalty", 1.0),
        presence_penalty=given("presence_penalty", 0.0),
        frequency_penalty=given("frequency_penalty", 0.0),
        seed=_optional(sampling, "seed"),
        logit_bias=tuple((token, round(bias, 6)) for token, bias in sampling.logit_bias.items()),
        max_tokens=max_tokens,
        stop=tuple(sampling.stop),
        stop_token_ids=tuple(sampling.stop_token_ids),
        ignore_eos=sampling.ignore_eos,
        logprobs=logprobs,
        n=n,
        use_beam_search=sampling.use_beam_search,
        best_of=best_of,
        length_penalty=given("length_penalty", 1.0),
        structured_output=_structure_from_pb(sampling),
        speculative=_optional(sampling, "speculative"),
    )


def _structure_from_pb(sampling: pb.SamplingParams) -> StructuredOutput | None:
    if not sampling.HasField("structured_output"):
        return None
    given = sampling.structured_output
    return StructuredOutput(STRUCTURE_FROM_PB[given.kind], given.spec)


# --- requests, written by the grpc backend ---


def chat_to_pb(request: GenerateRequest, model: str) -> pb.ChatRequest:
    messages = [_message_to_pb(m) for m in request.messages or ()]
    out = pb.ChatRequest(model=model, messages=messages, sampling=sampling_to_pb(request.sampling))
    if request.tools is not None:
        tools = request.tools
        out.tools.extend(pb.Tool(name=t.name, description=t.description, parameters=t.parameters)
                         for t in tools.functions)  # fmt: skip
        out.tool_choice.CopyFrom(pb.ToolChoice(mode=CHOICE_TO_PB[tools.choice], function=tools.function or ""))
        out.parallel_tool_calls = tools.parallel
    # The tenant's prefix-cache salt crosses the hop in the request (a field, not metadata): it is
    # part of what is asked, like the prompt; a worker with key records decides whether to keep it.
    if request.cache_salt:
        out.cache_salt = request.cache_salt
    return out


def _message_to_pb(message: ChatMessage) -> pb.ChatMessage:
    out = pb.ChatMessage(role=ROLE_TO_PB[message.role], content=message.content)
    out.tool_calls.extend(pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in message.tool_calls)
    if message.tool_call_id is not None:
        out.tool_call_id = message.tool_call_id
    if message.name is not None:
        out.name = message.name
    return out


def complete_to_pb(request: GenerateRequest, model: str) -> pb.CompleteRequest:
    out = pb.CompleteRequest(model=model, sampling=sampling_to_pb(request.sampling))
    if request.cache_salt:
        out.cache_salt = request.cache_salt
    if request.prompt is not None:
        out.text = request.prompt
    else:
        out.token_ids.ids.extend(request.prompt_token_ids or ())
    return out


def sampling_to_pb(params: SamplingParams) -> pb.SamplingParams:
    """Every value set explicitly, so the worker applies no default of its own."""
    out = pb.SamplingParams(
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        min_p=params.min_p,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=params.repetition_penalty,
        stop=params.stop,
        stop_token_ids=params.stop_token_ids,
        logit_bias=dict(params.logit_bias),
        ignore_eos=params.ignore_eos,
        n=params.n,
        use_beam_search=params.use_beam_search,
        length_penalty=params.length_penalty,
    )
    for name in ("max_tokens", "seed", "logprobs", "best_of", "speculative"):
        value = getattr(params, name)
        if value is not None:
            setattr(out, name, value)
    if params.structured_output is not None:
        structured = params.structured_output
        out.structured_output.CopyFrom(pb.StructuredOutput(kind=STRUCTURE_TO_PB[structured.kind], spec=structured.spec))
    return out


# --- deltas and usage ---

R = TypeVar("R", pb.ChatResponse, pb.CompleteResponse)


def delta_to_pb(message_type: type[R], request_id: str, model: str, delta: TokenDelta) -> R:
    """One stream message for ``delta``; a choice's last carries its ``choice_usage``."""
    message = message_type(
        id=request_id,
        model=model,
        index=delta.index,
        text=delta.text,
        token_ids=delta.token_ids,
        logprobs=[_logprob_to_pb(lp) for lp in delta.logprobs],
        finish_reason=FINISH_TO_PB[delta.finish_reason] if delta.finish_reason else pb.FINISH_REASON_UNSPECIFIED,
    )
    if delta.usage is not None:
        message.choice_usage.CopyFrom(usage_to_pb(delta.usage))
    if delta.tool_calls:
        assert isinstance(message, pb.ChatResponse)  # calls come only in chat
        message.tool_calls.extend(_call_delta_to_pb(c) for c in delta.tool_calls)
    return message


def _call_delta_to_pb(delta: ToolCallDelta) -> pb.ToolCallDelta:
    out = pb.ToolCallDelta(index=delta.index, arguments=delta.arguments)
    if delta.id is not None:
        out.id = delta.id
    if delta.name is not None:
        out.name = delta.name
    return out


def delta_from_pb(message: pb.ChatResponse | pb.CompleteResponse) -> TokenDelta:
    usage = usage_from_pb(message.choice_usage) if message.HasField("choice_usage") else None
    logprobs = tuple(_logprob_from_pb(lp) for lp in message.logprobs)
    reason = FINISH_FROM_PB.get(message.finish_reason)
    calls: tuple[ToolCallDelta, ...] = ()
    if isinstance(message, pb.ChatResponse):
        calls = tuple(
            ToolCallDelta(c.index, _optional(c, "id"), _optional(c, "name"), c.arguments) for c in message.tool_calls
        )
    return TokenDelta(message.index, message.text, tuple(message.token_ids), logprobs, reason, usage, calls)


def usage_to_pb(usage: Usage) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, cached_tokens=usage.cached_tokens
    )


def usage_from_pb(usage: pb.Usage) -> Usage:
    return Usage(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)


def _logprob_to_pb(lp: TokenLogprob) -> pb.TokenLogprob:
    top = [pb.TopLogprob(token_id=t.token_id, token=t.token, logprob=t.logprob, bytes=t.bytes) for t in lp.top]
    return pb.TokenLogprob(token_id=lp.token_id, token=lp.token, logprob=lp.logprob, bytes=lp.bytes, top=top)


def _logprob_from_pb(lp: pb.TokenLogprob) -> TokenLogprob:
    top = tuple(TopLogprob(t.token_id, t.token, t.logprob, t.bytes) for t in lp.top)
    return TokenLogprob(lp.token_id, lp.token, lp.logprob, lp.bytes, top)


# --- embeddings (revision 5) ---


def embed_from_pb(request: pb.EmbedRequest, request_id: str) -> EmbedRequest:
    """Raises ``InvalidRequest`` naming the first bad field, as the HTTP API would (``input`` there)."""
    problems = _model_problems(request.model)
    inputs: list[EmbedInput] = []
    for i, item in enumerate(request.inputs):
        kind = item.WhichOneof("input")
        if kind is None:
            problems.append((f"inputs.{i}", "set text or token_ids", None))
        ids = tuple(item.token_ids.ids)
        problems += [(f"inputs.{i}", rule, t) for t in ids if (rule := TOKEN_ID.problem(t))]
        inputs.append(item.text if kind == "text" else ids)
    if rule := inputs_problem(tuple(inputs)):
        problems.append(("inputs", rule, None))
    dimensions = _optional(request, "dimensions")
    if dimensions is not None and dimensions < 1:
        problems.append(("dimensions", "Input should be greater than or equal to 1", dimensions))
    _raise_first(problems)
    return EmbedRequest(request_id, request.model, tuple(inputs), dimensions)


def embed_to_pb(request: EmbedRequest, model: str) -> pb.EmbedRequest:
    inputs = [
        pb.EmbedInput(text=item) if isinstance(item, str) else pb.EmbedInput(token_ids=pb.TokenIds(ids=item))
        for item in request.inputs
    ]
    message = pb.EmbedRequest(model=model, inputs=inputs)
    if request.dimensions is not None:
        message.dimensions = request.dimensions
    return message


def embeddings_to_pb(request_id: str, model: str, result: Embeddings) -> pb.EmbedResponse:
    return pb.EmbedResponse(
        id=request_id, model=model, usage=pb.Usage(prompt_tokens=result.prompt_tokens),
        embeddings=[pb.Embedding(index=i, values=v) for i, v in enumerate(result.vectors)],
    )  # fmt: skip


def embeddings_from_pb(response: pb.EmbedResponse) -> Embeddings:
    ordered = sorted(response.embeddings, key=lambda e: e.index)
    return Embeddings(tuple(tuple(e.values) for e in ordered), response.usage.prompt_tokens)
