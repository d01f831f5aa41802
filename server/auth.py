"""API keys: HTTP ``Authorization: Bearer <key>`` and gRPC ``authorization`` metadata.

Keys come from an environment variable (comma-separated) and/or a file (one per line, ``#``
comments), read once at start. Every key is compared in constant time (``hmac.compare_digest``),
all of them for every request, so timing tells nothing about which prefix matched.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc

from lmgate.backends.env_secret import why_no_secret
from lmgate.server.errors import AuthenticationError, LmgateError
from lmgate.server.settings import ConfigError, ServerSettings

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class ApiKeys:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    @classmethod
    def from_settings(cls, server: ServerSettings) -> ApiKeys | None:
        """The configured keys, or None when auth is off; ConfigError when it is on but has no key."""
        if server.api_keys_env is None and server.api_keys_file is None:
            return None  # no auth, or key records (server/tenancy/records.py)
        keys: list[str] = []
        if server.api_keys_env is not None:
            keys += [k.strip() for k in os.environ.get(server.api_keys_env, "").split(",") if k.strip()]
        if server.api_keys_file is not None:
            keys += _read_key_file(server.api_keys_file)
        if not keys:
            empty = []
            if server.api_keys_env is not None:
                empty.append(f"{why_no_secret(server.api_keys_env) or 'no key in ' + server.api_keys_env} "
                             "(server.api_keys_env)")  # fmt: skip
            if server.api_keys_file is not None:
                empty.append(f"{server.api_keys_file} (server.api_keys_file) holds no key")
            raise ConfigError(
                f"API keys are on but there is none: {' and '.join(empty)}: set the variable to comma-separated "
                "keys or put one key per line in the file, or remove the setting to serve without auth"
            )
        return cls(keys)

    def grpc_check(self, authorization: str | None, method: str) -> LmgateError | None:
        """For ``GateInterceptor``: UNAUTHENTICATED unless ``authorization`` holds a key."""
        return None if self.allows(authorization) else AuthenticationError(GRPC_DENIED)

    def allows(self, authorization: str | None) -> bool:
        """``authorization`` is the header / metadata value: ``Bearer <key>`` (the scheme in any case, as
        RFC 9110 has it; one space; the key exactly, no whitespace around it)."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key or key != key.strip():
            return False
        given = key.encode()
        matched = False
        for known in self._keys:
            matched |= hmac.compare_digest(given, known)
        return matched


def _read_key_file(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"server.api_keys_file: cannot read {path}: {exc.strerror}") from exc
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


GRPC_DENIED = "Missing or invalid API key: send metadata `authorization: Bearer <key>`."
GrpcCheck = Callable[[str | None, str], LmgateError | None]
"""(the ``authorization`` metadata, the method) -> why the call is refused, or None to let it in."""


class GateInterceptor(grpc.aio.ServerInterceptor):
    """gRPC: every method but the health checks passes ``check`` (plain keys: ``ApiKeys.grpc_check``;
    key records: server/tenancy/grpc.py) before it reaches the servicer; a refused call answers its
    error's status code."""

    def __init__(
        self, check: GrpcCheck, open_prefixes: tuple[str, ...] = ("/grpc.health.v1.Health/",),
        on_denied: Callable[[str, LmgateError], None] | None = None,
    ) -> None:  # fmt: skip
        """``on_denied(method, error)`` is told of each call refused (to count and log it)."""
        self._check = check
        self._open = open_prefixes
        self._on_denied = on_denied

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Req, Resp] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(self._open):
            return handler
        authorization = dict(details.invocation_metadata or ()).get("authorization")  # bytes only for -bin keys
        error = self._check(authorization if isinstance(authorization, str) else None, details.method)
        if error is None:
            return handler
        if self._on_denied is not None:
            self._on_denied(details.method, error)
        return _refusing(handler, error)


def _refusing(handler: grpc.RpcMethodHandler[Req, Resp], error: LmgateError) -> grpc.RpcMethodHandler[Req, Resp]:
    """A handler of the same shape as ``handler`` that answers ``error``'s status."""
    code = grpc.StatusCode[error.grpc_status]

    async def deny(request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> None:
        await context.abort(code, error.message)

    async def deny_stream(request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> AsyncIterator[None]:
        await context.abort(code, error.message)
        yield  # pragma: no cover - abort raises

    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(deny_stream, deserialize, serialize)
    return grpc.unary_unary_rpc_method_handler(deny, deserialize, serialize)
