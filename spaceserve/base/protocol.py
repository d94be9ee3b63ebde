"""uvicorn's httptools protocol with the limits it lacks: request-head size, header count, and the
time a client may take to send its request head (docs/security.md).

httptools buffers an unfinished header without bound, and nothing in uvicorn times out a connection
that trickles its head (the keep-alive timer only runs between requests, and any byte stops it).
Over ``MAX_CONNECTIONS`` (uvicorn's ``limit_concurrency``) requests get a 503; ``/health`` is exempt
so that a container's health check still tells "busy" from "dead". Every refusal here is an OpenAI
error body, as everywhere else.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..settings import CommonSettings
from .errors import error_body

EXEMPT_PATH = b"/health"


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = 32 * 1024
    max_headers = 100
    head_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connection_limit = self.limit_concurrency  # uvicorn's, applied per request below
        self._in_head = True  # between requests or inside a request's head
        self._head_bytes = 0
        self._header_count = 0
        self._refusal: tuple[int, str] | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    # -- time to send the head -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Waiting for the next request's head (none pipelined): it gets the same time as the first.
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._start_head_timer()

    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes:  # a request was begun: say why it ends
            self._refuse(408, "the request head took too long (HTTP_HEADER_TIMEOUT)")
        else:
            self.transport.close()

    # -- size and count of the head ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Checked after feeding: a read that ends the head may carry body bytes, which do not count.
        if self._in_head and self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
            self._refuse(431, "the request line and headers exceed MAX_HEADER_BYTES")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            # Raising stops the parser; uvicorn then calls send_400_response, which says 431.
            self._refusal = (431, "the request has more header lines than MAX_HEADERS")
            raise ValueError("too many headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._stop_head_timer()
        limit = self._connection_limit
        busy = (
            limit is not None
            and self.url.partition(b"?")[0] != EXEMPT_PATH
            and (len(self.connections) >= limit or len(self.tasks) >= limit)
        )
        self.limit_concurrency = None  # decided here, so that the refusal can be an OpenAI error
        app = self.app
        if busy:
            self.app = too_busy
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
            return
        status, reason = self._refusal
        self._refusal = None
        self._refuse(status, reason)

    def _refuse(self, status: int, reason: str) -> None:
        code = "request_timeout" if status == 408 else "request_header_fields_too_large"
        body = json.dumps(error_body(reason, "invalid_request_error", None, code)).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(head))
        self.transport.close()


async def too_busy(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer over ``MAX_CONNECTIONS``; the connection closes after it."""
    body = json.dumps(
        error_body(
            "the server has too many open connections (MAX_CONNECTIONS); retry shortly",
            "service_unavailable",
            None,
            "too_many_connections",
        )
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"retry-after", b"1"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def guarded_protocol(settings: CommonSettings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=``, with this app's limits."""
    return type(
        "SpaceserveHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "max_head_bytes": settings.max_header_bytes,
            "max_headers": settings.max_headers,
            "head_timeout": settings.http_header_timeout,
        },
    )
