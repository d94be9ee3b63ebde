"""The model-server app. Routes stay thin: auth and readiness come from dependencies, logic from
:class:`~spaceserve.serving.CompletionService`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .auth import KeyRing, presented_keys
from .bodylimit import BodyLimitMiddleware
from .engine.source import default_model_id
from .engine.types import Engine, Event, Failed
from .errors import APIError, install_error_handlers
from .metrics import Metrics, MetricsMiddleware, metrics_router
from .ratelimit import RateLimiter, RateLimitMiddleware, enforce_rate_limit
from .requestlog import AccessLogMiddleware, RequestRecord, get_record
from .runtime import ModelRuntime
from .schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from .serving import CompletionService, Prepared, timing_headers
from .settings import CommonSettings, ModelSettings
from .web import include_front_page

log = logging.getLogger("spaceserve.server")
T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DISCONNECT_POLL = 0.25  # seconds between checks that a non-streaming client is still there


class ClientGone(APIError):
    # nginx's "client closed request"; nobody receives it, but the access log shows it.
    status_code = 499
    error_type = "client_closed_request"
    default_code = "client_closed_request"


# -- dependencies ---------------------------------------------------------------------------


def record_dep(request: Request) -> RequestRecord:
    return get_record(request.scope)


RecordDep = Annotated[RequestRecord, Depends(record_dep)]


def require_key(request: Request, record: RecordDep) -> None:
    keyring: KeyRing = request.app.state.keyring
    record.key = keyring.check(presented_keys(request))


def runtime_dep(request: Request) -> ModelRuntime:
    runtime: ModelRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[ModelRuntime, Depends(runtime_dep)]


def service_dep(request: Request, runtime: RuntimeDep) -> CompletionService:
    engine = runtime.require()
    settings: ModelSettings = request.app.state.settings
    return CompletionService(
        engine,
        accepted_models={engine.info.model_id, *settings.model_aliases},
        request_timeout=settings.request_timeout,
    )


ServiceDep = Annotated[CompletionService, Depends(service_dep)]


# -- helpers --------------------------------------------------------------------------------


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


async def respond(
    request: Request, service: CompletionService, prepared: Prepared, record: RequestRecord, *, stream: bool
) -> Any:
    record.model = prepared.model
    events = service.start(prepared)
    try:
        if not stream:
            body, done = await until_disconnected(request, service.collect(prepared, events, record))
            return JSONResponse(body, headers=timing_headers(done))
        # Hold the headers until the first event so that a request refused before it started
        # (deadline passed in the queue) still gets a proper status code.
        first: Event = await until_disconnected(request, anext(events))
        if isinstance(first, Failed):
            raise first.error
    except BaseException:
        await events.aclose()
        raise
    return StreamingResponse(
        service.stream(prepared, first, events, record), media_type="text/event-stream", headers=SSE_HEADERS
    )


# -- routes ---------------------------------------------------------------------------------

public = APIRouter()
api = APIRouter(prefix="/v1", dependencies=[Depends(require_key), Depends(enforce_rate_limit)])


@public.get("/health")
async def health(runtime: RuntimeDep) -> JSONResponse:
    body = runtime.health()
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


async def json_index(request: Request) -> dict[str, Any]:
    """``GET /`` for clients that ask for JSON only; browsers get the front page."""
    runtime: ModelRuntime = request.app.state.runtime
    return {
        "service": "spaceserve model server",
        "status": runtime.health()["status"],
        "model": request.app.state.model_id,
        "endpoints": ["/health", "/v1/models", "/v1/chat/completions", "/v1/completions"],
    }


@api.get("/models")
async def models(request: Request) -> ModelList:
    settings: ModelSettings = request.app.state.settings
    created = request.app.state.created
    ids = [request.app.state.model_id, *settings.model_aliases]
    return ModelList(data=[ModelCard(id=i, created=created, owned_by="spaceserve") for i in ids])


@api.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, service: ServiceDep, record: RecordDep
) -> Any:
    return await respond(request, service, service.prepare_chat(body), record, stream=body.stream)


@api.post("/completions")
async def completions(body: CompletionRequest, request: Request, service: ServiceDep, record: RecordDep) -> Any:
    return await respond(request, service, service.prepare_text(body), record, stream=body.stream)


# -- the app --------------------------------------------------------------------------------


def configure_logging(settings: CommonSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def build_base_app(settings: CommonSettings, lifespan: Callable[[FastAPI], Any], title: str) -> FastAPI:
    """What every mode shares: errors, body limit, access log, keys, rate limits, metrics.

    A mode's /v1 router adds ``Depends(enforce_rate_limit)`` after its key check.
    """
    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.keyring = KeyRing.from_settings(settings)
    app.state.ratelimiter = RateLimiter.from_settings(settings)
    # The runtime appears in the lifespan (model server only); the metrics read it at scrape time.
    app.state.metrics = Metrics(runtime=lambda: getattr(app.state, "runtime", None))
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RateLimitMiddleware, limiter=app.state.ratelimiter)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(AccessLogMiddleware)
    app.include_router(metrics_router())
    return app


def create_app(settings: ModelSettings, loader: Callable[[], Engine] | None = None) -> FastAPI:
    """The model server. ``loader`` replaces the llama.cpp engine in narrow unit tests."""
    model_id = settings.model_id or default_model_id(settings.model_source)

    def load_llama() -> Engine:
        # Imported here: llama_cpp is only in the model server's image, not the proxy's.
        from .engine.engine import LlamaEngine

        return LlamaEngine.load(settings, model_id)

    load = loader or load_llama

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("auth: %s", app.state.keyring.describe())
        runtime = ModelRuntime(load, warmup=settings.warmup)
        app.state.runtime = runtime
        runtime.start()  # the server listens at once; the model loads in the background
        try:
            yield
        finally:
            await runtime.close()

    app = build_base_app(settings, lifespan, "spaceserve model server")
    app.state.model_id = model_id
    app.state.created = int(time.time())
    app.include_router(public)
    include_front_page(app, json_index)
    app.include_router(api)
    return app
