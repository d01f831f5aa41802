"""uvicorn's HTTP protocol with a deadline on request headers: a half-sent request is closed.

uvicorn arms a timer only on idle keep-alive connections, and any byte cancels it, so a client
that opens a connection and sends its headers a byte at a time (slowloris) holds the connection
for ever. Here a timer runs from the connection's first byte (or its opening) and from the start
of each later request until that request's headers are complete; when it fires, the connection
gets ``408 Request Timeout`` and is closed. The body has its own deadline, in the gateway
middleware (server/http/gate.py).
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class _HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout_s: ClassVar[float] = 15.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # narrows BaseTransport, as uvicorn does
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _headers_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()


def http_protocol(header_timeout_s: float) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, closing connections whose request
    headers take longer than ``header_timeout_s``."""
    return type("HeaderDeadlineProtocol", (_HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s})
