"""CORS, so that a page on another origin (another Space's front page, a static site) can call /v1.

Keys travel in headers (``Authorization`` / ``X-API-Key``), never in cookies, so credentials are
never allowed and ``*`` lets a page do no more than a script outside a browser already can. Any
request header is allowed (browser SDKs add their own, e.g. the OpenAI SDK's ``x-stainless-*``).
The middleware sits outside the key check and the rate limit: a preflight carries no key and is
answered before them, and their 401/429 answers get the headers so a page can read them.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp

from .errors import APIError

METHODS = ("GET", "POST", "HEAD", "OPTIONS")
# Response headers a page may read: Retry-After on 429/503, the rate limit, timing and tracing.
EXPOSED_HEADERS = (
    "Retry-After",
    "X-Request-Id",
    "X-Upstream",
    "X-Cached-Tokens",
    "X-Time-To-First-Token-Ms",
    "X-Prompt-Tokens-Per-Second",
    "X-Generated-Tokens-Per-Second",
    *(f"X-RateLimit-{part}-{kind}" for part in ("Limit", "Remaining", "Reset") for kind in ("Requests", "Tokens")),
)
# Browsers cache a preflight for at most this long (Chromium caps it at two hours).
MAX_AGE = 7200


class PreflightRefused(APIError):
    status_code = 403
    error_type = "invalid_request_error"
    default_code = "cors_not_allowed"


class CORS(CORSMiddleware):
    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=METHODS,
            allow_headers=["*"],
            allow_credentials=False,
            expose_headers=EXPOSED_HEADERS,
            max_age=MAX_AGE,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        """Starlette's answer, with an OpenAI-shaped body saying why when the preflight is refused."""
        answer = super().preflight_response(request_headers)
        if answer.status_code == 200:
            return answer
        origin = request_headers["origin"]
        method = request_headers["access-control-request-method"]
        if not self.is_allowed_origin(origin):
            reason = f"origin {origin!r} is not allowed to call this API (CORS_ALLOW_ORIGINS)"
        elif method not in self.allow_methods:
            reason = f"method {method!r} is not allowed; allowed: {', '.join(METHODS)}"
        else:
            reason = "requests from a private network page are not allowed"
        keep = {k: v for k, v in answer.headers.items() if k.lower().startswith(("access-control-", "vary"))}
        return PreflightRefused(f"CORS preflight refused: {reason}", headers=keep).response()
