"""The ``grpc`` backend: a model served by another lmgate, through ``lmgate.v1.Inference``.

A gateway lists one of these per worker replica. Requests are sent as Chat (messages) or Complete
(prompt or token ids) with every sampling parameter set explicitly; the worker validates them
again and streams deltas back, each choice's last with its usage (lmgate.v1 revision 2; a worker
of revision 1 sends none, and the gateway counts the tokens it streamed). Conversions are
backends/grpc/convert.py's. Closing the stream cancels the call, which aborts the worker's
sequences; a worker's error keeps its field and code (trailing metadata, not parsed text).

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
from collections.abc import AsyncGenerator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lmgate.backends.base import Backend
from lmgate.backends.embedding import Embeddings, EmbedRequest
from lmgate.backends.errors import BackendError, BackendUnavailable, InvalidRequest
from lmgate.backends.grpc.config import GrpcConfig
from lmgate.backends.grpc.convert import (
    ERROR_CODE_KEY,
    ERROR_PARAM_KEY,
    chat_to_pb,
    complete_to_pb,
    delta_from_pb,
    embed_to_pb,
    embeddings_from_pb,
)
from lmgate.backends.grpc.credentials import authorization, channel_credentials
from lmgate.backends.types import BackendStats, Capabilities, GenerateRequest, ModelInfo, TokenDelta
from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

HEALTH_MISSES = 2
"""Failed health checks in a row that mark a worker unhealthy."""


class GrpcBackend(Backend):
    def __init__(self, name: str, config: GrpcConfig) -> None:
        self._name = name
        self._config = config
        self._remote = config.remote_model or name
        # One backend per worker: the registry makes a replica per target of a list (registry.py).
        assert isinstance(config.target, str), "a GrpcBackend serves one target"
        self._target: str = config.target
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
        ModelLoadError when its key or TLS files cannot be read (backends/grpc/credentials.py)."""
        await self.shutdown()  # a retry after a failed start begins from a fresh channel
        self._auth = authorization(self._config)
        credentials = channel_credentials(self._config)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(self._target, options=self._channel_options())
        else:
            self._channel = grpc.aio.secure_channel(self._target, credentials, options=self._channel_options())
        self._stub = pb_grpc.InferenceStub(self._channel)
        try:
            listing: pb.ListModelsResponse = await self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self._config.connect_timeout_s, wait_for_ready=True,
                metadata=self._auth,
            )  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            await self.shutdown()
            raise _error(exc, self._target) from exc
        model = next((m for m in listing.models if self._remote in (m.name, *m.aliases)), None)
        if model is None or not model.ready:
            await self.shutdown()
            state = "does not serve" if model is None else "has not loaded"
            raise BackendUnavailable(f"worker {self._target} {state} model {self._remote!r}")
        self._info = ModelInfo(self._name, "grpc", model.context_length, model.quantization or None)
        self._capabilities = Capabilities(frozenset(model.supported_params), max_n=128, tools=model.tools)
        self._serving = True
        self._watch = asyncio.create_task(self._watch_health(model.name))

    def _channel_options(self) -> list[tuple[str, str | int]]:
        config = self._config
        service_config = json.dumps({"loadBalancingConfig": [{config.load_balancing: {}}]})
        options: list[tuple[str, str | int]] = [
            ("grpc.service_config", service_config),
            ("grpc.keepalive_time_ms", int(config.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
            # Every ping's ack deadline (not only keepalive's): gRPC's own default is 60 s.
            ("grpc.http2.ping_timeout_ms", int(config.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        if config.tls_server_name:
            options.append(("grpc.ssl_target_name_override", config.tls_server_name))
        return options

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
                # types-grpcio-health-checking's HealthStub declares no methods (the generated one has Check).
                reply = await stub.Check(request, timeout=self._config.health_timeout_s)  # type: ignore[attr-defined]  # the stubs lack Check
                serving, why, misses = reply.status == health_pb2.HealthCheckResponse.SERVING, "it is not serving", 0
            except grpc.aio.AioRpcError as exc:
                misses += 1
                serving, why = misses < HEALTH_MISSES and self._serving, f"{exc.code().name}: {exc.details()}"
            if serving != self._serving:
                if serving:
                    log.warning("worker %s serves model %s again", self._target, self._remote)
                else:
                    log.warning("worker %s marked unhealthy for model %s: %s", self._target, self._remote, why)
            self._serving = serving
            await asyncio.sleep(self._config.health_interval_s)

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta, None]:
        stub = self._require_stub()
        metadata = (("x-request-id", request.request_id), *self._auth)
        if request.messages is not None:
            call = stub.Chat(chat_to_pb(request, self._remote), metadata=metadata)
        else:
            call = stub.Complete(complete_to_pb(request, self._remote), metadata=metadata)
        self._open += 1
        try:
            async for message in call:
                if message.HasField("usage"):
                    return  # the request's total: each choice's came with its last delta
                yield delta_from_pb(message)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self._target) from exc
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
            response: pb.TokenizeResponse = await self._require_stub().Tokenize(
                pb.TokenizeRequest(model=self._remote, text=text, add_special=add_special), metadata=self._auth
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self._target) from exc
        return list(response.token_ids)

    async def detokenize(self, token_ids: list[int]) -> str:
        try:
            # The generated stubs (inference_pb2_grpc) are untyped: the reply's type is the rpc's.
            response: pb.DetokenizeResponse = await self._require_stub().Detokenize(
                pb.DetokenizeRequest(model=self._remote, token_ids=token_ids), metadata=self._auth
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self._target) from exc
        return response.text

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """Forwarded as Embed (revision 5), ``dimensions`` included: the worker shortens the vectors."""
        metadata = (("x-request-id", request.request_id), *self._auth)
        self._open += 1
        try:
            response: pb.EmbedResponse = await self._require_stub().Embed(
                embed_to_pb(request, self._remote), metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self._target) from exc
        finally:
            self._open -= 1
        return embeddings_from_pb(response)

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


def _error(exc: grpc.aio.AioRpcError, target: str) -> BackendError:
    """The worker's status as the backend error the gateway translates again."""
    code, details = exc.code(), exc.details() or ""
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        trailers = dict(exc.trailing_metadata() or ())
        return InvalidRequest(details, param=trailers.get(ERROR_PARAM_KEY), code=trailers.get(ERROR_CODE_KEY))
    return BackendUnavailable(f"worker {target}: {code.name}: {details}")
