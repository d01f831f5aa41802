"""The ``grpc`` backend: a model served by another lmgate, through ``lmgate.v1.Inference``.

A gateway lists one of these per worker replica. Requests are sent as Chat (messages) or Complete
(prompt or token ids) with every sampling parameter set explicitly; the worker validates them
again and streams deltas back. The worker reports usage once, after every choice; each choice's
last delta is held until then so that it can carry its usage. Closing the stream cancels the call,
which aborts the worker's sequences.

A worker can die, hang (SIGSTOP, a stuck host) or come back. Two mechanisms keep the gateway out of
its way: HTTP/2 keepalive pings end every stream on a connection that stops answering (its clients
get an error, not a hang), and a health check of the model every ``health_interval_s`` decides
``healthy()``, which the router reads before it sends a request there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lmgate.backends.base import Backend
from lmgate.backends.env_secret import why_no_secret
from lmgate.backends.errors import BackendError, BackendUnavailable, InvalidRequest, ModelLoadError
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

log = logging.getLogger(__name__)

HEALTH_MISSES = 2
"""Failed health checks in a row that mark a worker unhealthy."""

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
        self._serving = False
        self._watch: asyncio.Task[None] | None = None
        self._auth: tuple[tuple[str, str], ...] = ()
        """The worker's API key as call metadata (empty without ``api_key_env``)."""

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise BackendUnavailable(f"model {self._name!r} is not connected")
        return self._info

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def start(self) -> None:
        """Connect, find the model on the worker and start watching its health; raises
        BackendUnavailable (the pool tries again later) when the worker does not serve it yet, and
        ModelLoadError when ``api_key_env`` names no set variable."""
        await self.shutdown()  # a retry after a failed start begins from a fresh channel
        self._auth = _authorization(self._config.api_key_env)
        self._channel = grpc.aio.insecure_channel(self._config.target, options=self._channel_options())
        self._stub = pb_grpc.InferenceStub(self._channel)
        try:
            listing = await self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self._config.connect_timeout_s, wait_for_ready=True,
                metadata=self._auth,
            )  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            await self.shutdown()
            raise _error(exc, self._config.target) from exc
        model = next((m for m in listing.models if self._remote in (m.name, *m.aliases)), None)
        if model is None or not model.ready:
            await self.shutdown()
            state = "does not serve" if model is None else "has not loaded"
            raise BackendUnavailable(f"worker {self._config.target} {state} model {self._remote!r}")
        self._info = ModelInfo(self._name, "grpc", model.context_length, model.quantization or None)
        self._capabilities = Capabilities(frozenset(model.supported_params), max_n=128)
        self._serving = True
        self._watch = asyncio.create_task(self._watch_health(model.name))

    def _channel_options(self) -> list[tuple[str, str | int]]:
        config = self._config
        service_config = json.dumps({"loadBalancingConfig": [{config.load_balancing: {}}]})
        return [
            ("grpc.service_config", service_config),
            ("grpc.keepalive_time_ms", int(config.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
            # Every ping's ack deadline (not only keepalive's): gRPC's own default is 60 s.
            ("grpc.http2.ping_timeout_ms", int(config.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]

    async def _watch_health(self, service: str) -> None:
        """Check the model's health on the worker for ever. ``_serving`` follows the worker's answer
        at once; a check that fails (no answer within health_timeout_s, no connection) counts only
        when ``HEALTH_MISSES`` fail in a row, so that one slow answer from a busy worker does not
        take it out of the rotation."""
        stub = health_pb2_grpc.HealthStub(self._require_channel())
        request = health_pb2.HealthCheckRequest(service=service)
        misses = 0
        while True:
            try:
                reply = await stub.Check(request, timeout=self._config.health_timeout_s)
                serving, why, misses = reply.status == health_pb2.HealthCheckResponse.SERVING, "it is not serving", 0
            except grpc.aio.AioRpcError as exc:
                misses += 1
                serving, why = misses < HEALTH_MISSES and self._serving, f"{exc.code().name}: {exc.details()}"
            if serving != self._serving:
                if serving:
                    log.warning("worker %s serves model %s again", self._config.target, self._remote)
                else:
                    log.warning("worker %s marked unhealthy for model %s: %s", self._config.target, self._remote, why)
            self._serving = serving
            await asyncio.sleep(self._config.health_interval_s)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenDelta]:
        stub = self._require_stub()
        metadata = (("x-request-id", request.request_id), *self._auth)
        # The tenant's prefix-cache salt crosses the hop in the request (a proto field, not metadata):
        # it is part of what is asked, like the prompt, and a worker with key records decides whether
        # to keep it (the gateway's key has forward_cache_salt) or to put its caller's own in its place.
        salt = {"cache_salt": request.cache_salt} if request.cache_salt else {}
        if request.messages is not None:
            messages = [pb.ChatMessage(role=_ROLES[m.role.value], content=m.content) for m in request.messages]
            chat = pb.ChatRequest(model=self._remote, messages=messages, sampling=_sampling(request.sampling), **salt)
            call = stub.Chat(chat, metadata=metadata)
        else:
            prompt = (
                {"text": request.prompt}
                if request.prompt is not None
                else {"token_ids": pb.TokenIds(ids=request.prompt_token_ids or ())}
            )
            call = stub.Complete(
                pb.CompleteRequest(model=self._remote, sampling=_sampling(request.sampling), **prompt, **salt),
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

    def _require_channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            raise BackendUnavailable(f"model {self._name!r} is not connected")
        return self._channel

    def _require_stub(self) -> pb_grpc.InferenceStub:
        if self._stub is None:
            raise BackendUnavailable(f"model {self._name!r} is not connected")
        return self._stub

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        try:
            response = await self._require_stub().Tokenize(
                pb.TokenizeRequest(model=self._remote, text=text, add_special=add_special), metadata=self._auth
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self._config.target) from exc
        return list(response.token_ids)

    async def detokenize(self, token_ids: list[int]) -> str:
        try:
            response = await self._require_stub().Detokenize(
                pb.DetokenizeRequest(model=self._remote, token_ids=token_ids), metadata=self._auth
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self._config.target) from exc
        return response.text

    def stats(self) -> BackendStats:
        return BackendStats(running=self._open)

    def healthy(self) -> bool:
        """Connected, and the worker's last health check of the model answered SERVING in time."""
        return self._channel is not None and self._serving

    async def shutdown(self) -> None:
        self._serving = False
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None


def _authorization(api_key_env: str | None) -> tuple[tuple[str, str], ...]:
    """``authorization`` metadata with the key in ``api_key_env``; ModelLoadError when it is unset or empty."""
    if api_key_env is None:
        return ()
    if (why := why_no_secret(api_key_env)) is not None:
        raise ModelLoadError(f"api_key_env: {why}")
    return (("authorization", f"Bearer {os.environ[api_key_env].strip()}"),)


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
