"""The ``grpc`` backend: a model served by another lmgate, through ``lmgate.v1.Inference``.

A gateway lists one of these per worker replica. Requests are sent as Chat (messages) or Complete
(prompt or token ids) with every sampling parameter set explicitly; the worker validates them
again and streams deltas back. The worker reports usage once, after every choice; each choice's
last delta is held until then so that it can carry its usage. Closing the stream cancels the call,
which aborts the worker's sequences.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc

from lmgate.backends.base import Backend
from lmgate.backends.errors import BackendError, BackendUnavailable, InvalidRequest
from lmgate.backends.grpc.config import GrpcConfig
from lmgate.backends.types import (
    BackendStats,
    Capabilities,
    FinishReason,
    GenerateRequest,
    ModelInfo,
    SamplingParams,
    TokenDelta,
    TokenLogprob,
    TopLogprob,
)
from lmgate.backends.upstream_usage import UsageSplitter
from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

_ROLES = {"system": pb.ROLE_SYSTEM, "user": pb.ROLE_USER, "assistant": pb.ROLE_ASSISTANT,
          "developer": pb.ROLE_DEVELOPER, "tool": pb.ROLE_TOOL}  # fmt: skip
_FINISH = {pb.FINISH_REASON_STOP: FinishReason.STOP, pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
           pb.FINISH_REASON_ABORT: FinishReason.ABORT}  # fmt: skip


class GrpcBackend(Backend):
    def __init__(self, name: str, config: GrpcConfig) -> None:
        self._name = name
        self._config = config
        self._remote = config.remote_model or name
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.InferenceStub | None = None
        self._info: ModelInfo | None = None
        self._capabilities = Capabilities(frozenset())
        self._open = 0

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise BackendUnavailable(f"model {self._name!r} is not connected")
        return self._info

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def start(self) -> None:
        service_config = json.dumps({"loadBalancingConfig": [{self._config.load_balancing: {}}]})
        self._channel = grpc.aio.insecure_channel(
            self._config.target, options=[("grpc.service_config", service_config)]
        )
        self._stub = pb_grpc.InferenceStub(self._channel)
        listing = await self._stub.ListModels(
            pb.ListModelsRequest(), timeout=self._config.connect_timeout_s, wait_for_ready=True
        )
        model = next((m for m in listing.models if self._remote in (m.name, *m.aliases)), None)
        if model is None or not model.ready:
            state = "does not serve" if model is None else "has not loaded"
            raise BackendUnavailable(f"worker {self._config.target} {state} model {self._remote!r}")
        self._info = ModelInfo(self._name, "grpc", model.context_length, model.quantization or None)
        self._capabilities = Capabilities(frozenset(model.supported_params), max_n=128)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenDelta]:
        stub = self._require_stub()
        metadata = (("x-request-id", request.request_id),)
        if request.messages is not None:
            messages = [pb.ChatMessage(role=_ROLES[m.role.value], content=m.content) for m in request.messages]
            chat = pb.ChatRequest(model=self._remote, messages=messages, sampling=_sampling(request.sampling))
            call = stub.Chat(chat, metadata=metadata)
        else:
            prompt = (
                {"text": request.prompt}
                if request.prompt is not None
                else {"token_ids": pb.TokenIds(ids=request.prompt_token_ids or ())}
            )
            call = stub.Complete(
                pb.CompleteRequest(model=self._remote, sampling=_sampling(request.sampling), **prompt),
                metadata=metadata,
            )
        self._open += 1
        split = UsageSplitter(request.sampling.n)
        try:
            async for message in call:
                if message.HasField("usage"):
                    u = message.usage
                    for held in split.release(u.prompt_tokens, u.completion_tokens, u.cached_tokens):
                        yield held
                    return
                delta = _delta(message)
                if (now := split.add(delta, len(delta.token_ids))) is not None:
                    yield now
            for held in split.release():  # the worker ended without usage: still end every choice
                yield held
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self._config.target) from exc
        finally:
            call.cancel()  # closed early: the worker aborts the request
            self._open -= 1

    def _require_stub(self) -> pb_grpc.InferenceStub:
        if self._stub is None:
            raise BackendUnavailable(f"model {self._name!r} is not connected")
        return self._stub

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        try:
            response = await self._require_stub().Tokenize(
                pb.TokenizeRequest(model=self._remote, text=text, add_special=add_special)
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self._config.target) from exc
        return list(response.token_ids)

    async def detokenize(self, token_ids: list[int]) -> str:
        try:
            response = await self._require_stub().Detokenize(
                pb.DetokenizeRequest(model=self._remote, token_ids=token_ids)
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self._config.target) from exc
        return response.text

    def stats(self) -> BackendStats:
        return BackendStats(running=self._open)

    def healthy(self) -> bool:
        if self._channel is None:
            return False
        return self._channel.get_state() is not grpc.ChannelConnectivity.SHUTDOWN

    async def shutdown(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def _sampling(params: SamplingParams) -> pb.SamplingParams:
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
    for name in ("max_tokens", "seed", "logprobs", "best_of"):
        value = getattr(params, name)
        if value is not None:
            setattr(out, name, value)
    return out


def _delta(message: pb.ChatResponse | pb.CompleteResponse) -> TokenDelta:
    logprobs = tuple(
        TokenLogprob(lp.token_id, lp.token, lp.logprob, lp.bytes,
                     tuple(TopLogprob(t.token_id, t.token, t.logprob, t.bytes) for t in lp.top))
        for lp in message.logprobs
    )  # fmt: skip
    reason = _FINISH.get(message.finish_reason)
    return TokenDelta(message.index, message.text, tuple(message.token_ids), logprobs, reason)


def _error(exc: grpc.aio.AioRpcError, target: str) -> BackendError:
    """The worker's status as the backend error the gateway translates again."""
    code, details = exc.code(), exc.details() or ""
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        field = details.split(":", 1)[0] if ":" in details else None
        return InvalidRequest(details, param=field if field and " " not in field else None)
    return BackendUnavailable(f"worker {target}: {code.name}: {details}")
