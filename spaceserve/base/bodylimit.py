"""Read the request body before the app sees it: 413 over ``MAX_BODY_BYTES`` (chunked uploads
included), 408 when it takes longer than ``HTTP_BODY_TIMEOUT``, and nothing at all for the app when
the client leaves half-way (a cut body must not pass for a whole one)."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError, ClientGone, PayloadTooLarge, RequestTimeout
from .requestlog import get_record


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 60.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, self._too_large())
            return
        # Read the whole body first (it is small by definition), then replay it to the app.
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._read(receive)
        except TimeoutError:
            error: APIError = RequestTimeout(
                f"the request body did not arrive within {self.timeout:g} s (HTTP_BODY_TIMEOUT)"
            )
            await self._refuse(scope, receive, send, error, close=True)
            return
        except _Refused as refused:
            await self._refuse(scope, receive, send, refused.error)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: the body will never be whole
                raise _Refused(ClientGone("the client closed the connection before sending the whole body"))
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                raise _Refused(self._too_large())
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> APIError:
        return PayloadTooLarge(f"request body is larger than the {self.max_bytes}-byte limit (MAX_BODY_BYTES)")

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, error: APIError, *, close: bool = False) -> None:
        get_record(scope).failed(error)
        response = error.response()
        if close:  # the rest of the body may still be on its way: do not read it as the next request
            response.headers["connection"] = "close"
        await response(scope, receive, send)


class _Refused(Exception):
    def __init__(self, error: APIError) -> None:
        super().__init__(error.message)
        self.error = error
