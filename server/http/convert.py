"""OpenAI request models → the internal ``GenerateRequest``; internal deltas → OpenAI output parts.

The one conversion of each HTTP request into the backend contract (DESIGN §2 step 2), and the
pieces the routes assemble responses and stream chunks from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmgate.backends.sampling_rules import COMPLETION_MAX_TOKENS
from lmgate.backends.types import (
    ChatMessage,
    GenerateRequest,
    Role,
    SamplingParams,
    TokenDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from lmgate.server.http.protocol import (
    ChatCompletionRequest,
    ChatLogprobs,
    ChatMessageParam,
    CompletionLogprobs,
    CompletionRequest,
    PromptTokensDetails,
    TokenLogprobOut,
    TopLogprobOut,
    UsageOut,
    _Request,
)


def sampling_params(body: _Request, *, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
    """OpenAI defaults: temperature 1, top_p 1; vLLM extensions default to off."""
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(0, body.top_k or 0),
        min_p=body.min_p or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        seed=body.seed,
        logit_bias=tuple((int(k), v) for k, v in (body.logit_bias or {}).items()),
        max_tokens=max_tokens,
        stop=body.stop_list,
        stop_token_ids=tuple(body.stop_token_ids or ()),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        n=body.n,
        use_beam_search=body.use_beam_search,
        best_of=body.best_of,
        length_penalty=body.length_penalty,
        structured_output=body.structured_output,
        speculative=body.speculative,
    )


def chat_request(body: ChatCompletionRequest, request_id: str) -> GenerateRequest:
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return GenerateRequest(
        request_id=request_id,
        model=body.model,
        sampling=sampling_params(body, max_tokens=body.output_limit, logprobs=logprobs),
        messages=tuple(chat_message(m) for m in body.messages),
        tools=body.tool_set,
        cache_salt=body.cache_salt,
    )


def chat_message(message: ChatMessageParam) -> ChatMessage:
    calls = tuple(c.to_internal() for c in message.tool_calls or ())
    return ChatMessage(Role(message.role), message.text, calls, message.tool_call_id, message.name)


def completion_requests(body: CompletionRequest, request_id: str) -> list[GenerateRequest]:
    """One request per prompt of the batch; choice indexes are offset by the caller."""
    sampling = sampling_params(body, max_tokens=body.max_tokens or COMPLETION_MAX_TOKENS, logprobs=body.logprobs)
    requests = []
    salt = body.cache_salt
    for i, prompt in enumerate(body.prompts):
        rid = request_id if i == 0 else f"{request_id}-{i}"
        if isinstance(prompt, str):
            requests.append(GenerateRequest(rid, body.model, sampling, prompt=prompt, cache_salt=salt))
        else:
            requests.append(GenerateRequest(rid, body.model, sampling, prompt_token_ids=tuple(prompt), cache_salt=salt))
    return requests


def usage_out(usage: Usage) -> UsageOut:
    return UsageOut(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def chat_logprobs(items: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            TokenLogprobOut(
                token=lp.token,
                logprob=lp.logprob,
                bytes=list(lp.bytes),
                top_logprobs=[TopLogprobOut(token=t.token, logprob=t.logprob, bytes=list(t.bytes)) for t in lp.top],
            )
            for lp in items
        ]
    )


def completion_logprobs(items: list[TokenLogprob], text_offset: int) -> CompletionLogprobs:
    """The legacy completions shape; ``text_offset`` is where the first token's text starts."""
    out = CompletionLogprobs()
    for lp in items:
        out.tokens.append(lp.token)
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append({t.token: t.logprob for t in lp.top} if lp.top else None)
        out.text_offset.append(text_offset)
        text_offset += len(lp.bytes.decode("utf-8", errors="replace"))
    return out


@dataclass
class ChoiceText:
    """A non-streamed choice being assembled from its deltas."""

    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    calls: dict[int, list[str]] = field(default_factory=dict)
    """Each call's id, name and arguments pieces, by index."""

    def add(self, delta: TokenDelta) -> None:
        self.text.append(delta.text)
        self.logprobs.extend(delta.logprobs)
        for piece in delta.tool_calls:
            self._add_call(piece)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason.value

    def _add_call(self, piece: ToolCallDelta) -> None:
        call = self.calls.setdefault(piece.index, ["", "", ""])
        call[0] = piece.id or call[0]
        call[1] = piece.name or call[1]
        call[2] += piece.arguments

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [ToolCall(*self.calls[i]) for i in sorted(self.calls)]
