"""Per-caller rate limits: a requests-per-minute and a generated-tokens-per-minute token bucket.

The caller is the API key's fingerprint, or the client address when no keys are configured.
A request takes one request token before it runs. Generated tokens are only known when the
response has ended, so they are charged then: a long completion can drive the token bucket
below zero, and the caller is refused until it has refilled above zero again. A new caller
starts with full buckets and its first request already counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..settings import CommonSettings
from .errors import RateLimited
from .requestlog import get_record

Kind = Literal["requests", "tokens"]
STATE_KEY = "ratelimit"
# Buckets left untouched long enough to refill completely are the same as new ones; drop them
# once there are this many, so that a stream of one-off client addresses does not grow memory.
SWEEP_AT = 10_000


@dataclass(frozen=True)
class Limits:
    rpm: int = 0
    tpm: int = 0

    @property
    def enabled(self) -> bool:
        return self.rpm > 0 or self.tpm > 0


class Bucket:
    """``capacity`` tokens, refilled continuously over one minute; may be overdrawn."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for_one(self) -> float:
        """Seconds until one whole token is there (0 if it is now)."""
        return max(0.0, (1.0 - self.level) / self.rate)

    def until_full(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)

    def headers(self, kind: Kind) -> list[tuple[str, str]]:
        return [
            (f"x-ratelimit-limit-{kind}", str(int(self.capacity))),
            (f"x-ratelimit-remaining-{kind}", str(max(0, math.floor(self.level)))),
            (f"x-ratelimit-reset-{kind}", duration(self.until_full())),
        ]


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


@dataclass
class Decision:
    headers: list[tuple[str, str]]
    refused: Kind | None = None
    retry_after: int = 0


class Subject:
    """One caller's two buckets (either may be off)."""

    def __init__(self, limits: Limits, now: float) -> None:
        self.requests = Bucket(limits.rpm, now) if limits.rpm else None
        self.tokens = Bucket(limits.tpm, now) if limits.tpm else None

    def refill(self, now: float) -> None:
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.refill(now)

    def idle(self) -> bool:
        return all(b is None or b.level >= b.capacity for b in (self.requests, self.tokens))

    def headers(self) -> list[tuple[str, str]]:
        headers = []
        if self.requests is not None:
            headers += self.requests.headers("requests")
        if self.tokens is not None:
            headers += self.tokens.headers("tokens")
        return headers


class RateLimiter:
    """All callers' buckets. Used from the event loop only, so it needs no lock."""

    def __init__(
        self, default: Limits, overrides: dict[str, Limits], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.default = default
        self.overrides = overrides
        self.clock = clock
        self._subjects: dict[str, Subject] = {}

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> RateLimiter:
        default = Limits(rpm=settings.rate_limit_rpm, tpm=settings.rate_limit_tpm)
        overrides = {
            subject: Limits(
                rpm=default.rpm if o.rpm is None else o.rpm,
                tpm=default.tpm if o.tpm is None else o.tpm,
            )
            for subject, o in settings.rate_limit_overrides.items()
        }
        return cls(default, overrides)

    @property
    def enabled(self) -> bool:
        return self.default.enabled or any(limits.enabled for limits in self.overrides.values())

    def limits_for(self, subject: str) -> Limits:
        return self.overrides.get(subject, self.default)

    def _subject(self, subject: str, now: float) -> Subject | None:
        state = self._subjects.get(subject)
        if state is None:
            limits = self.limits_for(subject)
            if not limits.enabled:
                return None
            if len(self._subjects) >= SWEEP_AT:
                self._sweep(now)
            state = self._subjects[subject] = Subject(limits, now)
        state.refill(now)
        return state

    def _sweep(self, now: float) -> None:
        for name, state in list(self._subjects.items()):
            state.refill(now)
            if state.idle():
                del self._subjects[name]

    def check(self, subject: str) -> Decision:
        """Take one request token for ``subject``, or say which limit refuses it and for how long."""
        state = self._subject(subject, self.clock())
        if state is None:
            return Decision(headers=[])
        refused: Kind | None = None
        wait = 0.0
        if state.tokens is not None and state.tokens.level < 1:
            refused, wait = "tokens", state.tokens.wait_for_one()
        elif state.requests is not None and state.requests.level < 1:
            refused, wait = "requests", state.requests.wait_for_one()
        elif state.requests is not None:
            state.requests.level -= 1
        return Decision(headers=state.headers(), refused=refused, retry_after=max(1, math.ceil(wait)))

    def charge(self, subject: str, tokens: int) -> None:
        """Count ``tokens`` generated for ``subject`` (after its response ended)."""
        state = self._subject(subject, self.clock())
        if state is not None and state.tokens is not None:
            state.tokens.level -= tokens


def subject_of(request: Request, key_fingerprint: str | None) -> tuple[str, str]:
    """(bucket name, metrics label): the key's fingerprint, else the client address."""
    if key_fingerprint is not None:
        return key_fingerprint, key_fingerprint
    client = request.client
    return (client.host if client else "unknown"), "address"


def enforce_rate_limit(request: Request) -> None:
    """/v1 dependency, after the key check: refuse callers over their limit with a 429."""
    limiter: RateLimiter = request.app.state.ratelimiter
    if not limiter.enabled:
        return
    record = get_record(request.scope)
    subject, label = subject_of(request, record.key)
    decision = limiter.check(subject)
    # RateLimitMiddleware adds the headers to whatever response this request ends with.
    request.scope["state"][STATE_KEY] = (subject, decision.headers)
    if decision.refused is not None:
        request.app.state.metrics.rate_limited(label, decision.refused)
        per = "requests" if decision.refused == "requests" else "generated tokens"
        raise RateLimited(
            f"rate limit exceeded: too many {per} per minute for this API key; retry in {decision.retry_after}s",
            headers={"Retry-After": str(decision.retry_after)},
        )


class RateLimitMiddleware:
    """Adds the ``x-ratelimit-*`` headers and charges generated tokens once the response ended."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limiter.enabled:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start" and STATE_KEY in state:
                _, headers = state[STATE_KEY]
                message["headers"] = [
                    *message.get("headers", []),
                    *((name.encode(), value.encode()) for name, value in headers),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if STATE_KEY in state:
                tokens = get_record(scope).completion_tokens
                if tokens:
                    self.limiter.charge(state[STATE_KEY][0], tokens)
