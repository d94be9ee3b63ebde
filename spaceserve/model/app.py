"""The model-server app. Routes stay thin: auth and readiness come from dependencies, logic from
:class:`~spaceserve.model.service.CompletionService`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..base.app import RecordDep, build_base_app, until_disconnected
from ..base.auth import require_key
from ..base.ratelimit import enforce_rate_limit
from ..base.requestlog import RequestRecord
from ..base.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from ..base.sse import HEADERS as SSE_HEADERS
from ..engine.source import default_model_id
from ..engine.types import Engine, Event, Failed
from ..settings import ModelSettings
from ..web import include_front_page
from .runtime import ModelRuntime, RuntimeCollector
from .service import ANY_MODEL, CompletionService, Prepared, timing_headers

log = logging.getLogger("spaceserve.model.app")


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
        clamp_max_tokens=settings.max_tokens_overflow == "clamp",
        max_messages=settings.max_messages,
    )


ServiceDep = Annotated[CompletionService, Depends(service_dep)]


# -- helpers --------------------------------------------------------------------------------


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


HEALTH_STATUS = {"ok": 200, "loading": 503, "error": 500}


@public.get("/health")
async def health(runtime: RuntimeDep) -> JSONResponse:
    body = runtime.health()
    return JSONResponse(body, status_code=HEALTH_STATUS[body["status"]])


def readiness_gate(request: Request) -> None:
    """Until the model is ready, answer /v1 with the key check and 503 (loading) or 500 (failed),
    without reading the body: a client retrying every 503 at once costs a header check each time."""
    runtime: ModelRuntime = request.app.state.runtime
    if runtime.engine is not None:
        return
    require_key(request)
    runtime.require()


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
    ids = [request.app.state.model_id, *(a for a in settings.model_aliases if a != ANY_MODEL)]
    return ModelList(data=[ModelCard(id=i, created=created, owned_by="spaceserve") for i in ids])


@api.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, service: ServiceDep, record: RecordDep
) -> Any:
    # Rendering and tokenizing a large request takes a while: off the event loop, so that /health
    # and every running stream keep their pace (ctypes releases the GIL while llama.cpp tokenizes).
    prepared = await asyncio.to_thread(service.prepare_chat, body)
    return await respond(request, service, prepared, record, stream=body.stream)


@api.post("/completions")
async def completions(body: CompletionRequest, request: Request, service: ServiceDep, record: RecordDep) -> Any:
    prepared = await asyncio.to_thread(service.prepare_text, body)
    return await respond(request, service, prepared, record, stream=body.stream)


# -- the app --------------------------------------------------------------------------------


def create_app(settings: ModelSettings, loader: Callable[[], Engine] | None = None) -> FastAPI:
    """The model server. ``loader`` replaces the llama.cpp engine in narrow unit tests."""
    model_id = settings.model_id or default_model_id(settings.model_source)

    def load_llama() -> Engine:
        # Imported here so that a fake loader (unit tests) never loads llama.cpp.
        from ..engine.engine import LlamaEngine

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

    app = build_base_app(settings, lifespan, "spaceserve model server", gate=readiness_gate)
    app.state.model_id = model_id
    app.state.created = int(time.time())
    # The runtime appears in the lifespan; the collector reads it at scrape time.
    app.state.metrics.register(RuntimeCollector(lambda: getattr(app.state, "runtime", None)))
    app.include_router(public)
    include_front_page(app, json_index)
    app.include_router(api)
    return app
