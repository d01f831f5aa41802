"""The Inference service registered so that a malformed request is INVALID_ARGUMENT, not UNKNOWN.

The generated ``add_InferenceServicer_to_server`` deserializes with ``Message.FromString``; bytes that
are not a valid message make grpc answer UNKNOWN with a Python class name in the details. Here the
same handlers are built from the service descriptor with a deserializer that returns a
``MalformedRequest`` instead of raising, and each method answers one with INVALID_ARGUMENT before the
servicer sees it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from lmgate.v1 import inference_pb2 as pb


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    type_name: str
    error: str


def _lenient(message_class: type[Message]) -> Callable[[bytes], Message | MalformedRequest]:
    def deserialize(data: bytes) -> Message | MalformedRequest:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return MalformedRequest(message_class.DESCRIPTOR.full_name, str(exc))

    return deserialize


Context = grpc.aio.ServicerContext[Message | MalformedRequest, Any]
"""The context of a handler here: it is called with what ``_lenient`` made of the request bytes."""

OnRefused = Callable[[str, str], None]
"""Told (method path, message) of each malformed request refused."""


async def _refuse(request: MalformedRequest, method: str, on_refused: OnRefused, context: Context) -> None:
    message = f"the request is not a valid {request.type_name} message: {request.error}"
    on_refused(method, message)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


def _unary(behavior: Callable[..., Any], method: str, on_refused: OnRefused) -> Callable[..., Any]:
    async def handle(request: Message | MalformedRequest, context: Context) -> Any:
        if isinstance(request, MalformedRequest):
            await _refuse(request, method, on_refused, context)
        return await behavior(request, context)

    return handle


def _streaming(
    behavior: Callable[..., AsyncIterator[Any]], method: str, on_refused: OnRefused
) -> Callable[..., AsyncIterator[Any]]:
    async def handle(request: Message | MalformedRequest, context: Context) -> AsyncIterator[Any]:
        if isinstance(request, MalformedRequest):
            await _refuse(request, method, on_refused, context)
        async for response in behavior(request, context):
            yield response

    return handle


def add_inference_service(servicer: object, server: grpc.aio.Server, on_refused: OnRefused) -> None:
    """Register ``servicer``'s methods (unary and server-streaming) for every rpc of ``lmgate.v1.Inference``;
    ``on_refused`` hears of each request that is not a valid message."""
    service = pb.DESCRIPTOR.services_by_name["Inference"]
    handlers = {}
    for method in service.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        behavior = getattr(servicer, method.name)
        path = f"/{service.full_name}/{method.name}"
        if method.server_streaming:
            make, handle = grpc.unary_stream_rpc_method_handler, _streaming(behavior, path, on_refused)
        else:
            make, handle = grpc.unary_unary_rpc_method_handler, _unary(behavior, path, on_refused)
        handlers[method.name] = make(
            handle, request_deserializer=_lenient(request_class), response_serializer=response_class.SerializeToString
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
