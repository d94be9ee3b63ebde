"""What every app shares: the FastAPI factory with errors, body limit, access log, keys, rate limits
and metrics, plus the small dependencies and helpers that routes of every mode use."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..settings import CommonSettings
from .auth import KeyRing, require_key
from .bodylimit import BodyLimitMiddleware
from .cors import CORS
from .errors import APIError, ClientGone, install_error_handlers
from .metrics import Metrics, MetricsMiddleware, metrics_router
from .ratelimit import RateLimiter, RateLimitMiddleware
from .requestlog import AccessLogMiddleware, RequestRecord, get_record

T = TypeVar("T")

DISCONNECT_POLL = 0.25  # seconds between checks that a non-streaming client is still there


def record_dep(request: Request) -> RequestRecord:
    return get_record(request.scope)


RecordDep = Annotated[RequestRecord, Depends(record_dep)]


async def until_disconnected(request: Request, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` unless the client goes away first; then cancel it and raise ClientGone."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone("the client closed the connection")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


Gate = Callable[[Request], None]  # raises an APIError to refuse a request before its body is read


class GateMiddleware:
    """Refuses ``/v1/`` requests that cannot be served now, before their body is read or parsed.

    Clients such as ``@huggingface/inference`` retry a 503 at once and without limit; each refusal
    during loading must cost a header check, not the parsing of a 50 KB prompt. Sits inside the
    access log, metrics and rate limit, so refusals are still logged, counted and limited.
    """

    def __init__(self, app: ASGIApp, keyring: KeyRing, gate: Gate | None) -> None:
        self.app = app
        self.keyring = keyring
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/") and scope["method"] != "OPTIONS":
            try:
                if self.keyring.refusal:
                    self.keyring.check([])  # raises: no key on a public host
                if self.gate is not None:
                    self.gate(Request(scope))
            except APIError as error:
                get_record(scope).failed(error)
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def configure_logging(settings: CommonSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def build_base_app(
    settings: CommonSettings, lifespan: Callable[[FastAPI], Any], title: str, *, gate: Gate | None = None
) -> FastAPI:
    """What every mode shares: errors, body limit, access log, keys, rate limits, metrics, CORS.

    A mode's /v1 router adds ``Depends(enforce_rate_limit)`` after its key check, and registers its
    own collectors on ``app.state.metrics``. ``gate`` refuses /v1 requests before their body is read
    (the model server: while the model loads or after it failed).
    """
    # No docs pages; the schema only behind the key (it shows the routes, models and limits).
    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.keyring = KeyRing.from_settings(settings)
    app.state.ratelimiter = RateLimiter.from_settings(settings)
    app.state.metrics = Metrics()
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout=settings.http_body_timeout)
    app.add_middleware(GateMiddleware, keyring=app.state.keyring, gate=gate)
    app.add_middleware(RateLimitMiddleware, limiter=app.state.ratelimiter)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    if settings.cors_allow_origins:
        # Outside the key check, rate limit and body limit: preflights pass, their refusals get headers.
        app.add_middleware(CORS, origins=settings.cors_allow_origins)
    app.add_middleware(AccessLogMiddleware)
    app.include_router(metrics_router())
    app.include_router(openapi_router())
    return app


def require_openapi_access(request: Request) -> None:
    if not request.app.state.settings.openapi_public:
        require_key(request)


def openapi_router() -> APIRouter:
    """``GET /openapi.json`` with a key like /v1, or for anyone with ``OPENAPI_PUBLIC=true``."""
    router = APIRouter()

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request, _: Annotated[None, Depends(require_openapi_access)]) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    return router
