"""The public gRPC API, ``lmgate.v1.Inference``: a thin servicer.

Each request is converted to the internal ``GenerateRequest`` and checked by the rules HTTP applies
(backends/grpc/convert.py, backends/sampling_rules.py), dispatched like an HTTP request, and each
delta leaves as one stream message. Errors leave as the status code their class names
(server/errors.py), mapped in one place, ``_rpc_errors``; a bad field is named in the details and,
as data, in the trailing metadata ``lmgate-error-param``. A cancelled call or a passed deadline
cancels the handler, which closes the backend stream and so aborts the sequences.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from lmgate.backends.errors import BackendError
from lmgate.backends.grpc import convert
from lmgate.backends.tasks import Task
from lmgate.backends.types import GenerateRequest, Usage
from lmgate.server.errors import LmgateError, from_backend_error
from lmgate.server.metrics import Metrics
from lmgate.server.placement.dispatch import Dispatcher
from lmgate.server.placement.embedding import embed
from lmgate.server.placement.pool import ModelPool
from lmgate.server.placement.registry import ModelRegistry
from lmgate.server.tenancy.records import Tenant, Tenants
from lmgate.server.tenancy.scope import check_model, visible, visible_adapters
from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["Inference"].full_name
REQUEST_ID_KEY = "x-request-id"
IGNORED_PARAMS_KEY = "x-lmgate-ignored-params"


AnyContext = grpc.aio.ServicerContext[Any, Any]
"""Any rpc's context, for the helpers that only read metadata, set trailers and abort."""

MAX_DETAILS_CHARS = 2000
"""Status details travel in trailers, which clients cap (8 KB by default): a longer one would turn
into RESOURCE_EXHAUSTED on the client, hiding the error."""


@contextlib.asynccontextmanager
async def _rpc_errors(context: AnyContext) -> AsyncIterator[None]:
    """The one place errors become gRPC status codes."""
    try:
        yield
    except (LmgateError, BackendError) as exc:
        error = exc if isinstance(exc, LmgateError) else from_backend_error(exc)
        trailers = []  # the field and code as data: a gateway in front passes them on unparsed
        if error.retry_after_s is not None:
            trailers.append(("retry-after", str(error.retry_after_s)))
        if error.param is not None:
            trailers.append((convert.ERROR_PARAM_KEY, error.param[:200]))
        if error.code is not None:
            trailers.append((convert.ERROR_CODE_KEY, error.code[:200]))
        if trailers:
            context.set_trailing_metadata(tuple(trailers))
        await context.abort(grpc.StatusCode[error.grpc_status], error.message[:MAX_DETAILS_CHARS])


def grpc_endpoints() -> frozenset[str]:
    """The paths of the service's methods, as metrics and the request log name them."""
    return frozenset(f"/{SERVICE}/{name}" for name in pb.DESCRIPTOR.services_by_name["Inference"].methods_by_name)


def _request_id(context: AnyContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


Q = TypeVar("Q", pb.ChatRequest, pb.CompleteRequest)
R = TypeVar("R", pb.ChatResponse, pb.CompleteResponse)


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(
        self, registry: ModelRegistry, dispatcher: Dispatcher, metrics: Metrics, tenants: Tenants | None = None
    ) -> None:
        self._registry = registry
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._tenants = tenants

    def _tenant(self, context: AnyContext) -> Tenant | None:
        """The caller's key record (the interceptor let only known keys in), None without records."""
        if self._tenants is None:
            return None
        authorization = dict(context.invocation_metadata() or ()).get("authorization")  # bytes only for -bin keys
        return self._tenants.identify(authorization if isinstance(authorization, str) else None)

    async def Chat(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext[pb.ChatRequest, pb.ChatResponse]
    ) -> AsyncIterator[pb.ChatResponse]:
        async for message in self._generate(request, context, "Chat", convert.chat_from_pb, pb.ChatResponse):
            yield message

    async def Complete(
        self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext[pb.CompleteRequest, pb.CompleteResponse]
    ) -> AsyncIterator[pb.CompleteResponse]:
        responses = self._generate(request, context, "Complete", convert.complete_from_pb, pb.CompleteResponse)
        async for message in responses:
            yield message

    async def _generate(
        self,
        request: Q,
        context: grpc.aio.ServicerContext[Q, R],
        method: str,
        from_pb: Callable[[Q, str], GenerateRequest],
        message_type: type[R],
    ) -> AsyncIterator[R]:
        """Both streaming rpcs: convert and check, dispatch, measure; one message per delta with news
        (a choice's last with its usage), then one with the request's usage."""
        request_id = _request_id(context)
        async with _rpc_errors(context):
            tenant = self._tenant(context)
            with self._metrics.request("grpc", f"/{SERVICE}/{method}", request.model, request_id) as tracker:
                tracker.tenant = tenant.name if tenant is not None else None
                try:
                    internal = from_pb(request, request_id)
                except BackendError as exc:
                    raise from_backend_error(exc) from None  # counted as the client error it is
                dispatched = await self._dispatcher.open(request.model, [internal], tenant, tracker.placed)
                stream = tracker.watch(dispatched.streams[0], internal.sampling.n)
                model = dispatched.model
                # Closed however the call ends, a cancel before the first message included.
                async with contextlib.aclosing(stream):
                    await context.send_initial_metadata(_metadata(request_id, dispatched.ignored_params))
                    async for delta in stream:
                        if delta.text or delta.logprobs or delta.tool_calls or delta.finish_reason is not None:
                            yield convert.delta_to_pb(message_type, request_id, model, delta)
                yield message_type(id=request_id, model=model, usage=convert.usage_to_pb(tracker.usage()))

    async def ListModels(
        self,
        request: pb.ListModelsRequest,
        context: grpc.aio.ServicerContext[pb.ListModelsRequest, pb.ListModelsResponse],
    ) -> pb.ListModelsResponse:
        tenant = self._tenant(context)
        models = [_model_pb(pool) for pool in visible(self._registry, tenant)]
        models += [_model_pb(pool, adapter) for pool, adapter in visible_adapters(self._registry, tenant)]
        return pb.ListModelsResponse(models=models)

    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext[pb.TokenizeRequest, pb.TokenizeResponse]
    ) -> pb.TokenizeResponse:
        async with _rpc_errors(context):
            check_model(self._registry, request.model, self._tenant(context))
            backend = (await self._registry.loaded(request.model)).primary
            add_special = request.add_special if request.HasField("add_special") else True
            return pb.TokenizeResponse(token_ids=await backend.tokenize(request.text, add_special=add_special))
        raise AssertionError("unreachable: _rpc_errors aborts")

    async def Detokenize(
        self,
        request: pb.DetokenizeRequest,
        context: grpc.aio.ServicerContext[pb.DetokenizeRequest, pb.DetokenizeResponse],
    ) -> pb.DetokenizeResponse:
        async with _rpc_errors(context):
            check_model(self._registry, request.model, self._tenant(context))
            backend = (await self._registry.loaded(request.model)).primary
            return pb.DetokenizeResponse(text=await backend.detokenize(list(request.token_ids)))
        raise AssertionError("unreachable: _rpc_errors aborts")

    async def Embed(
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext[pb.EmbedRequest, pb.EmbedResponse]
    ) -> pb.EmbedResponse:
        """Placed like HTTP /v1/embeddings (server/placement/embedding.py), counted and logged alike."""
        request_id = _request_id(context)
        async with _rpc_errors(context):
            tenant = self._tenant(context)
            with self._metrics.request("grpc", f"/{SERVICE}/Embed", request.model, request_id) as tracker:
                tracker.tenant = tenant.name if tenant is not None else None
                try:
                    internal = convert.embed_from_pb(request, request_id)
                except BackendError as exc:
                    raise from_backend_error(exc) from None
                model, result = await embed(self._dispatcher, internal, tenant, tracker.placed)
                tracker.count(Usage(result.prompt_tokens, 0))
                tracker.finish("ok")
            await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
            return convert.embeddings_to_pb(request_id, model, result)
        raise AssertionError("unreachable: _rpc_errors aborts")


def _metadata(request_id: str, ignored_params: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    if ignored_params:
        return ((REQUEST_ID_KEY, request_id), (IGNORED_PARAMS_KEY, ",".join(ignored_params)))
    return ((REQUEST_ID_KEY, request_id),)


def _model_pb(pool: ModelPool, adapter: str | None = None) -> pb.Model:
    """A base model, or (``adapter``) a LoRA adapter with its base model in ``parent`` (revision 6)."""
    if adapter is None:
        model = pb.Model(name=pool.name, aliases=pool.settings.aliases, backend=pool.backend_kind, ready=pool.healthy(),
                         tasks=[str(t) for t in pool.settings.tasks])  # fmt: skip
    else:  # an adapter serves generation only
        model = pb.Model(name=adapter, parent=pool.name, backend=pool.backend_kind, ready=pool.healthy(),
                         tasks=[str(Task.GENERATE)])  # fmt: skip
    if pool.healthy():
        info, capabilities = pool.primary.info, pool.primary.capabilities
        model.context_length = info.context_length
        model.quantization = info.quantization or ""
        model.supported_params.extend(sorted(capabilities.sampling_params))
        model.tools = capabilities.tools
    return model
