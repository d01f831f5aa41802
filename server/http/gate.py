"""What every HTTP request meets before FastAPI parses it: the API key, the body's size and time.

A pure ASGI middleware: a missing or wrong key is a 401 with an OpenAI-shaped body, except on the
open paths (probes, and /metrics unless configured otherwise). The body is read here, whole,
before the app sees it: over the cap it is a 413 (from Content-Length at once, or as a chunked
body streams in), and one that has not arrived ``body_timeout_s`` after the headers is a 408.
The app then reads the buffered body; later receives (the client leaving) pass through.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lmgate.server.auth import ApiKeys
from lmgate.server.errors import AuthenticationError, ClientTimeoutError, LmgateError, PayloadTooLargeError
from lmgate.server.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class GatewayMiddleware:
    def __init__(
        self, app: ASGIApp, *, keys: ApiKeys | None, open_paths: frozenset[str], max_body_bytes: int,
        body_timeout_s: float, metrics: Metrics,
    ) -> None:  # fmt: skip
        self.app = app
        self.keys = keys
        self.open_paths = open_paths
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k: v for k, v in scope["headers"] if k in (b"authorization", b"content-length")}
        if self.keys is not None and scope["path"] not in self.open_paths:
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not self.keys.allows(given):
                error: LmgateError = AuthenticationError()
                self.metrics.rejected("http", scope["path"], error)
                await _respond(send, error, {"www-authenticate": "Bearer"})
                return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            error = self._too_large()
            self.metrics.rejected("http", scope["path"], error)
            await _respond(send, error)
            return
        try:
            body, disconnected = await self._read_body(receive)
        except LmgateError as error:
            self.metrics.rejected("http", scope["path"], error)
            await _respond(send, error, {"connection": "close"})
            return
        await self.app(scope, _replay(body, disconnected, receive), send)

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"the request body is larger than the server's limit of {self.max_body_bytes} bytes"
        )

    async def _read_body(self, receive: Receive) -> tuple[bytes, bool]:
        """The whole body, and whether the client left while sending it; PayloadTooLargeError or
        ClientTimeoutError when it is too big or too slow."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return b"".join(chunks), True
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        raise self._too_large()
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks), False
        except TimeoutError:
            raise ClientTimeoutError(
                f"the request body did not arrive within {self.body_timeout_s:g} s (server.body_timeout_s)"
            ) from None


def _replay(body: bytes, disconnected: bool, receive: Receive) -> Receive:
    """A receive that gives the app the buffered body first, then the client's own messages."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    if disconnected:
        pending.append({"type": "http.disconnect"})

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _respond(send: Send, error: LmgateError, extra_headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra_headers or {}).items()]
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
