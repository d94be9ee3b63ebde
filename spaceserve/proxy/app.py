"""The proxy app: the model server's front (keys, errors, body limit, access log) over a cascade
of upstreams instead of a model. Routes stay thin; :class:`~spaceserve.proxy.relay.ProxyService`
does the work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ConfigDict, Field
from starlette.types import Receive, Scope, Send

from ..base.app import RecordDep, build_base_app, until_disconnected
from ..base.auth import require_key
from ..base.ratelimit import enforce_rate_limit
from ..base.requestlog import RequestRecord
from ..base.schemas import Endpoint, ModelCard, ModelList, UnicodeBody
from ..base.sse import HEADERS as SSE_HEADERS
from ..settings import ProxySettings
from ..web import include_front_page
from .config import load_proxy_config
from .metrics import ProxyMetrics
from .relay import HealthProber, ProxyService
from .state import CooldownPolicy, UpstreamPool

log = logging.getLogger("spaceserve.proxy")


class ProxyChatRequest(UnicodeBody):
    """Only what the proxy must read; every other field goes upstream untouched."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Any] = Field(min_length=1)
    stream: bool = False


class ProxyCompletionRequest(UnicodeBody):
    model_config = ConfigDict(extra="allow")
    model: str
    prompt: Any
    stream: bool = False


class RelayResponse(StreamingResponse):
    """A streaming response that always releases its upstream, even if it never started sending."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(content, media_type="text/event-stream", **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._on_close()


# -- dependencies ---------------------------------------------------------------------------


def proxy_dep(request: Request) -> ProxyService:
    service: ProxyService = request.app.state.proxy
    return service


def pool_dep(request: Request) -> UpstreamPool:
    pool: UpstreamPool = request.app.state.pool
    return pool


ProxyDep = Annotated[ProxyService, Depends(proxy_dep)]
PoolDep = Annotated[UpstreamPool, Depends(pool_dep)]


async def forward(
    request: Request, proxy: ProxyService, endpoint: Endpoint, model: str, stream: bool, record: RequestRecord
) -> Response:
    payload: dict[str, Any] = await request.json()  # as the client sent it, not as we parsed it
    record.model = model
    if not stream:
        served = await until_disconnected(request, proxy.complete(endpoint, payload, record))
        return JSONResponse(served.body, headers={"X-Upstream": served.upstream})
    opened = await until_disconnected(request, proxy.open_stream(endpoint, payload, record))
    return RelayResponse(
        proxy.relay(opened, record), opened.aclose, headers={**SSE_HEADERS, "X-Upstream": opened.state.name}
    )


# -- routes ---------------------------------------------------------------------------------

public = APIRouter()
# The same per-key limits as the model server; generated tokens are charged from the usage the
# upstream reports (see ProxyService.complete and relay).
api = APIRouter(prefix="/v1", dependencies=[Depends(require_key), Depends(enforce_rate_limit)])


@public.get("/health")
async def health(pool: PoolDep) -> JSONResponse:
    status, reason = pool.status()
    body: dict[str, Any] = {"status": status, "template": "proxy"}
    if reason:
        body["reason"] = reason
    body |= {
        "models": pool.model_names(),
        "upstreams": pool.health(),
        "aliases": {alias: [tier.name for tier in chain] for alias, chain in pool.config.aliases.items()},
    }
    return JSONResponse(body, status_code=503 if status == "unavailable" else 200)


async def json_index(request: Request) -> dict[str, Any]:
    """``GET /`` for clients that ask for JSON only; browsers get the front page."""
    pool: UpstreamPool = request.app.state.pool
    return {
        "service": "spaceserve proxy",
        "status": pool.status()[0],
        "models": pool.model_names(),
        "endpoints": ["/health", "/v1/models", "/v1/chat/completions", "/v1/completions"],
    }


@api.get("/models")
async def models(request: Request, pool: PoolDep) -> ModelList:
    created: int = request.app.state.created
    return ModelList(
        data=[ModelCard(id=name, created=created, owned_by="spaceserve-proxy") for name in pool.model_names()]
    )


@api.post("/chat/completions")
async def chat_completions(body: ProxyChatRequest, request: Request, proxy: ProxyDep, record: RecordDep) -> Response:
    return await forward(request, proxy, "chat", body.model, body.stream, record)


@api.post("/completions")
async def completions(body: ProxyCompletionRequest, request: Request, proxy: ProxyDep, record: RecordDep) -> Response:
    return await forward(request, proxy, "text", body.model, body.stream, record)


# -- the app --------------------------------------------------------------------------------


def create_proxy_app(settings: ProxySettings) -> FastAPI:
    """The proxy. The upstream list is read and checked here, so a bad one stops start-up."""
    config = load_proxy_config(settings)
    policy = CooldownPolicy(
        failures=settings.upstream_cooldown_failures,
        window=settings.upstream_cooldown_window,
        period=settings.upstream_cooldown_period,
        retry_after_max=settings.upstream_retry_after_max,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("auth: %s", app.state.keyring.describe())
        pool = UpstreamPool(config, policy, events=app.state.proxy_metrics)
        log.info(
            "proxy: %d upstream(s) in %d tier(s); models: %s",
            len(config.upstreams()), len(config.tiers), ", ".join(pool.model_names()) or "any",
        )  # fmt: skip
        if settings.log_level != "debug":
            logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call is noise
        client = httpx.AsyncClient(follow_redirects=False)
        app.state.pool = pool
        app.state.proxy = ProxyService(pool, client)
        prober = HealthProber(pool, client, settings.upstream_probe_interval, settings.upstream_probe_timeout)
        probing = asyncio.create_task(prober.run()) if settings.upstream_probe_interval > 0 else None
        try:
            yield
        finally:
            if probing is not None:
                probing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probing
            await client.aclose()

    app = build_base_app(settings, lifespan, "spaceserve proxy")
    # The cooldown gauges read whichever pool this app has when /metrics is scraped.
    app.state.proxy_metrics = ProxyMetrics(
        app.state.metrics.registry, lambda: app.state.pool.cooldowns() if hasattr(app.state, "pool") else {}
    )
    app.state.created = int(time.time())
    app.include_router(public)
    include_front_page(app, json_index)
    app.include_router(api)
    return app
