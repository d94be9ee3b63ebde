"""One structured log line per request, written when the response (stream included) has ended.

The line holds counts and timings and the caller's key fingerprint; never a key, a prompt or a
completion.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError

log = logging.getLogger("spaceserve.access")


class Completion(Protocol):
    """What a finished generation reports (the engine's ``Finished`` event has these fields)."""

    @property
    def finish_reason(self) -> str: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def predicted_ms(self) -> float: ...
    @property
    def draft_tokens(self) -> int: ...
    @property
    def draft_accepted(self) -> int: ...


@dataclass
class RequestRecord:
    request_id: str
    started: float = field(default_factory=time.monotonic)
    key: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    ttft_ms: float | None = None
    predicted_ms: float | None = None  # time spent generating, for tokens-per-second metrics
    draft_tokens: int = 0  # speculative decoding: draft tokens verified
    draft_accepted: int = 0  # ... and kept
    finish_reason: str | None = None
    error_code: str | None = None
    # Free-form fields other parts add (the proxy's upstream, for instance).
    extra: dict[str, Any] = field(default_factory=dict)

    def first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = (time.monotonic() - self.started) * 1000

    def finished(self, done: Completion) -> None:
        self.first_token()
        self.prompt_tokens = done.prompt_tokens
        self.completion_tokens = done.completion_tokens
        self.cached_tokens = done.cached_tokens
        self.predicted_ms = done.predicted_ms
        self.draft_tokens = done.draft_tokens
        self.draft_accepted = done.draft_accepted
        self.finish_reason = done.finish_reason

    def failed(self, error: APIError) -> None:
        self.error_code = error.code or error.error_type


def get_record(scope: Scope) -> RequestRecord:
    state = scope.setdefault("state", {})
    record = state.get("record")
    if record is None:
        record = state["record"] = RequestRecord(request_id=uuid.uuid4().hex[:16])
    assert isinstance(record, RequestRecord)
    return record


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = get_record(scope)
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", record.request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._write(scope, record, status or 500)

    @staticmethod
    def _write(scope: Scope, record: RequestRecord, status: int) -> None:
        if scope.get("path") in ("/health", "/metrics") and status == 200:
            return  # probes and scrapes every few seconds would drown the log
        line: dict[str, Any] = {
            "request_id": record.request_id,
            "method": scope.get("method"),
            "route": scope.get("path"),
            "status": status,
            "key": record.key,
            "model": record.model,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "cached_tokens": record.cached_tokens,
            "draft_tokens": record.draft_tokens or None,
            "draft_accepted": record.draft_tokens and record.draft_accepted,
            "ttft_ms": round(record.ttft_ms, 1) if record.ttft_ms is not None else None,
            "total_ms": round((time.monotonic() - record.started) * 1000, 1),
            "finish_reason": record.finish_reason,
            "error": record.error_code,
            **record.extra,
        }
        log.info(json.dumps({k: v for k, v in line.items() if v is not None}, separators=(",", ":")))
