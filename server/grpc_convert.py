"""Protobuf ↔ the HTTP API's request models and the internal types.

A gRPC request is turned into the same pydantic request the HTTP API validates (and from there
into the same ``GenerateRequest`` through server/convert.py), so both transports accept, refuse
and default exactly alike. Unset ``optional`` fields stay unset, as an omitted JSON field would.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ValidationError

from lmgate.backends.types import FinishReason, TokenDelta, TokenLogprob
from lmgate.server.errors import InvalidRequestError, from_validation_errors
from lmgate.server.protocol import ChatCompletionRequest, CompletionRequest, UsageOut
from lmgate.v1 import inference_pb2 as pb

_ROLES = {
    pb.ROLE_SYSTEM: "system",
    pb.ROLE_USER: "user",
    pb.ROLE_ASSISTANT: "assistant",
    pb.ROLE_DEVELOPER: "developer",
    pb.ROLE_TOOL: "tool",
}
_OPTIONAL = (
    "temperature", "top_p", "top_k", "min_p", "max_tokens", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "seed", "n", "best_of", "length_penalty",
)  # fmt: skip
FINISH_REASONS = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.ABORT: pb.FINISH_REASON_ABORT,
}


def _sampling(params: pb.SamplingParams) -> dict[str, Any]:
    fields: dict[str, Any] = {name: getattr(params, name) for name in _OPTIONAL if params.HasField(name)}
    # float32 on the wire: round so that 0.7 arrives as 0.7 and range checks see what was meant.
    fields |= {k: round(v, 6) for k, v in fields.items() if isinstance(v, float)}
    if params.stop:
        fields["stop"] = list(params.stop)
    if params.stop_token_ids:
        fields["stop_token_ids"] = list(params.stop_token_ids)
    if params.logit_bias:
        fields["logit_bias"] = {str(token): round(bias, 6) for token, bias in params.logit_bias.items()}
    return fields | {"ignore_eos": params.ignore_eos, "use_beam_search": params.use_beam_search}


def chat_request(request: pb.ChatRequest) -> ChatCompletionRequest:
    """Validate as the HTTP API would; raises InvalidRequestError naming the field."""
    body = {
        "model": request.model,
        "messages": [{"role": _ROLES.get(m.role, "unspecified"), "content": m.content} for m in request.messages],
        **_sampling(request.sampling),
        **_salt(request),
    }
    if request.sampling.HasField("logprobs"):
        body |= {"logprobs": True, "top_logprobs": request.sampling.logprobs}
    return _validate(ChatCompletionRequest, body)


def complete_request(request: pb.CompleteRequest) -> CompletionRequest:
    """Validate as the HTTP API would; raises InvalidRequestError naming the field."""
    kind = request.WhichOneof("prompt")
    if kind is None:
        raise InvalidRequestError("prompt: set text or token_ids", param="prompt")
    prompt: str | list[int] = request.text if kind == "text" else list(request.token_ids.ids)
    body = {"model": request.model, "prompt": prompt, **_sampling(request.sampling), **_salt(request)}
    if request.sampling.HasField("logprobs"):
        body["logprobs"] = request.sampling.logprobs
    return _validate(CompletionRequest, body)


def _salt(request: pb.ChatRequest | pb.CompleteRequest) -> dict[str, str]:
    """The request's ``cache_salt`` (a gateway's tenant), validated as the HTTP field is."""
    return {"cache_salt": request.cache_salt} if request.HasField("cache_salt") else {}


M = TypeVar("M", ChatCompletionRequest, CompletionRequest)


def _validate(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors()) from exc


def logprobs_pb(items: tuple[TokenLogprob, ...]) -> list[pb.TokenLogprob]:
    return [
        pb.TokenLogprob(
            token_id=lp.token_id,
            token=lp.token,
            logprob=lp.logprob,
            bytes=lp.bytes,
            top=[pb.TopLogprob(token_id=t.token_id, token=t.token, logprob=t.logprob, bytes=t.bytes) for t in lp.top],
        )
        for lp in items
    ]


def delta_fields(delta: TokenDelta) -> dict[str, Any]:
    """The fields of a ChatResponse / CompleteResponse carrying one delta."""
    return {
        "index": delta.index,
        "text": delta.text,
        "token_ids": delta.token_ids,
        "logprobs": logprobs_pb(delta.logprobs),
        "finish_reason": FINISH_REASONS[delta.finish_reason] if delta.finish_reason else pb.FINISH_REASON_UNSPECIFIED,
    }


def usage_pb(usage: UsageOut) -> pb.Usage:
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return pb.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, cached_tokens=cached)
