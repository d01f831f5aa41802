"""What every HTTP request meets before FastAPI parses it: the API key and the body-size cap.

A pure ASGI middleware (no per-request objects beyond the header scan): a missing or wrong key is
a 401 with an OpenAI-shaped body, except on the open paths (probes, and /metrics unless
configured otherwise); a body over the cap is a 413, from Content-Length at once or while a
chunked body streams in.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lmgate.server.auth import ApiKeys
from lmgate.server.errors import AuthenticationError, LmgateError, PayloadTooLargeError
from lmgate.server.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class GatewayMiddleware:
    def __init__(
        self, app: ASGIApp, *, keys: ApiKeys | None, open_paths: frozenset[str], max_body_bytes: int, metrics: Metrics
    ) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = open_paths
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k: v for k, v in scope["headers"] if k in (b"authorization", b"content-length")}
        if self.keys is not None and scope["path"] not in self.open_paths:
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not self.keys.allows(given):
                error = AuthenticationError()
                self.metrics.rejected("http", error)
                await _respond(send, error, {"www-authenticate": "Bearer"})
                return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await _respond(send, self._too_large())
            return
        await self.app(scope, self._capped(receive), send)

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"the request body is larger than the server's limit of {self.max_body_bytes} bytes"
        )

    def _capped(self, receive: Receive) -> Receive:
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise self._too_large()  # FastAPI's error handler answers 413
            return message

        return capped


async def _respond(send: Send, error: LmgateError, extra_headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra_headers or {}).items()]
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
