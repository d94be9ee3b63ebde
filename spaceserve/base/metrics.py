"""Prometheus metrics, gathered at the edge of the app: each request's :class:`RequestRecord` when
its response has ended. Each mode registers its own collectors (the model's state, the proxy's
upstreams) on the same registry.

Every app has its own registry (``app.state.metrics``), so several apps in one process (tests)
never share counters.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import require_key
from .requestlog import RequestRecord, get_record

# CPU inference: a first token can take 50 ms (cached prompt, idle server) or minutes (a long
# prompt queued behind others on 2 cores).
TIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 60, 120, 300, 600)
RATE_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500)
UNMATCHED = "unmatched"  # route label for paths no route serves, so random paths add no series


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "spaceserve_requests", "HTTP requests by route, status and model", ["route", "status", "model"], registry=r
        )
        self.duration = Histogram(
            "spaceserve_request_duration_seconds",
            "time from request to the end of the response (stream included)",
            ["route"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "spaceserve_time_to_first_token_seconds",
            "time from request to the first generated token",
            ["model"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "spaceserve_generated_tokens_per_second",
            "per request: generated tokens / generation time",
            ["model"],
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("spaceserve_prompt_tokens", "prompt tokens", ["model"], registry=r)
        self.cached_tokens = Counter(
            "spaceserve_cached_prompt_tokens", "prompt tokens reused from the prompt cache", ["model"], registry=r
        )
        self.completion_tokens = Counter("spaceserve_completion_tokens", "generated tokens", ["model"], registry=r)
        self.draft_tokens = Counter(
            "spaceserve_speculative_draft_tokens",
            "draft tokens verified by speculative decoding (looked up in the prompt and reply)",
            ["model"],
            registry=r,
        )
        self.draft_accepted = Counter(
            "spaceserve_speculative_accepted_tokens",
            "draft tokens the model agreed with (accepted / draft is the acceptance rate)",
            ["model"],
            registry=r,
        )
        self.queue_rejections = Counter(
            "spaceserve_queue_rejections", "requests refused because the queue was full (429 queue_full)", registry=r
        )
        self.disconnects = Counter(
            "spaceserve_client_disconnects", "requests whose client went away before the response ended", registry=r
        )
        self.rate_limit_rejections = Counter(
            "spaceserve_rate_limit_rejections",
            "requests refused by the rate limiter, by key fingerprint ('address' when keys are off) and limit",
            ["key", "limit"],
            registry=r,
        )

    def register(self, collector: Collector) -> None:
        """Add another collector (read at scrape time) to this app's registry."""
        self.registry.register(collector)

    def observe(self, record: RequestRecord, route: str, status: int, duration: float, *, disconnected: bool) -> None:
        model = record.model or ""
        self.requests.labels(route, str(status), model).inc()
        self.duration.labels(route).observe(duration)
        if status == 429 and record.error_code == "queue_full":
            self.queue_rejections.inc()
        if disconnected or status == 499:
            self.disconnects.inc()
        if record.ttft_ms is not None:
            self.ttft.labels(model).observe(record.ttft_ms / 1000)
        if record.prompt_tokens:
            self.prompt_tokens.labels(model).inc(record.prompt_tokens)
        if record.cached_tokens:
            self.cached_tokens.labels(model).inc(record.cached_tokens)
        if record.draft_tokens:
            self.draft_tokens.labels(model).inc(record.draft_tokens)
            self.draft_accepted.labels(model).inc(record.draft_accepted)
        if record.completion_tokens:
            self.completion_tokens.labels(model).inc(record.completion_tokens)
            if record.predicted_ms:
                self.tokens_per_second.labels(model).observe(record.completion_tokens / (record.predicted_ms / 1000))

    def rate_limited(self, key: str, limit: str) -> None:
        self.rate_limit_rejections.labels(key, limit).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Feeds :meth:`Metrics.observe` when a response (stream included) has ended."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = get_record(scope)
        status = 0
        complete = False
        disconnected = False

        async def receive_wrapper() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect" and not complete:
                disconnected = True
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            route = scope.get("route")
            self.metrics.observe(
                record,
                getattr(route, "path", UNMATCHED),
                status or 500,
                time.monotonic() - record.started,
                disconnected=disconnected,
            )


def require_metrics_access(request: Request) -> None:
    if not request.app.state.settings.metrics_public:
        require_key(request)


def metrics_router() -> APIRouter:
    """``GET /metrics`` for any app that has ``app.state.metrics`` (model server and proxy)."""
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request, _: Annotated[None, Depends(require_metrics_access)]) -> Response:
        registry: Metrics = request.app.state.metrics
        return Response(registry.render(), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    return router
