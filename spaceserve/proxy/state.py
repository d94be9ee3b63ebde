"""What the proxy knows about each upstream: in-flight requests, failures, cooldown, counters.

Cooldown is a small circuit breaker. ``failures`` failures within ``window`` seconds open it:
the upstream is skipped for ``period`` seconds; a failure that says the upstream is misconfigured
(its key refused, its model unknown) opens it at once. Then it is half-open: exactly one request (or a
background health probe) may try it; success closes the circuit, failure opens it again.
A ``Retry-After`` from the upstream is honoured separately: it is skipped until then.

Everything here runs on the event loop thread, so picking an upstream and reserving it happen
without an ``await`` in between and need no lock.

Attempts, failures and fallbacks are counted here and only here: each event bumps the upstream's
own counter (``/health``) and tells :class:`UpstreamEvents` (the Prometheus metrics) in the same
call, so the two views cannot drift apart.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..base.errors import ModelNotFound
from .config import CATCH_ALL, ProxyConfig, Tier, UpstreamConfig

Clock = Callable[[], float]
# What a failure does to the circuit: "count" towards opening it, open it "now", or leave it alone
# ("none": the request did not suit this upstream, which answered and is fine).
CooldownEffect = Literal["count", "now", "none"]
COUNTER_NAMES = (
    "attempts", "successes", "failures", "client_errors", "fallbacks", "skipped", "probes_ok", "probes_failed",
)  # fmt: skip


class UpstreamEvents(Protocol):
    """Who else hears of attempts, failures and fallbacks: :class:`spaceserve.proxy.metrics.ProxyMetrics`."""

    def attempt(self, upstream: str) -> None: ...
    def failure(self, upstream: str, reason: str) -> None: ...
    def fallback(self, from_upstream: str, to_upstream: str) -> None: ...


class NoEvents:
    def attempt(self, upstream: str) -> None:
        pass

    def failure(self, upstream: str, reason: str) -> None:
        pass

    def fallback(self, from_upstream: str, to_upstream: str) -> None:
        pass


@dataclass(frozen=True)
class CooldownPolicy:
    failures: int = 3
    window: float = 60.0
    period: float = 30.0
    retry_after_max: float = 300.0


class UpstreamState:
    def __init__(
        self,
        config: UpstreamConfig,
        api_key: str | None,
        policy: CooldownPolicy,
        clock: Clock = time.monotonic,
        events: UpstreamEvents | None = None,
    ) -> None:
        self.config = config
        self.events = events or NoEvents()
        self._api_key = api_key
        self.policy = policy
        self.clock = clock
        self.in_flight = 0
        self.last_error: str | None = None
        self.cooling_until: float | None = None  # set while the circuit is open or half-open
        self.retry_after_until: float | None = None
        self._probing = False  # the one half-open trial is out
        self._failures: deque[float] = deque()
        self.last_picked = 0.0
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:  # never show the key
        return f"UpstreamState({self.name!r}, in_flight={self.in_flight})"

    # -- keys -------------------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def scrub(self, text: str) -> str:
        """Remove this upstream's key from text that came back from it (some APIs echo it)."""
        return text.replace(self._api_key, "<upstream key>") if self._api_key else text

    # -- availability -----------------------------------------------------------------------

    def unavailable_reason(self, now: float | None = None) -> str | None:
        """Why this upstream must be skipped now, or None when it may be tried."""
        now = self.clock() if now is None else now
        if not self.config.enabled:
            return "disabled"
        if self.retry_after_until is not None and now < self.retry_after_until:
            return f"skipped: asked to retry after another {self.retry_after_until - now:.1f}s (Retry-After)"
        if self.cooling_until is not None:
            if now < self.cooling_until:
                return f"skipped: cooling down for another {self.cooling_until - now:.1f}s ({self.last_error})"
            if self._probing:
                return "skipped: cooling down, a trial request is in flight"
        return None

    def available_in(self, now: float | None = None) -> float | None:
        """Seconds until this upstream may be tried again (0 if now); None if disabled."""
        now = self.clock() if now is None else now
        if not self.config.enabled:
            return None
        until = max(self.retry_after_until or 0.0, self.cooling_until or 0.0)
        return max(0.0, until - now)

    def status(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        if not self.config.enabled:
            return "disabled"
        if self.retry_after_until is not None and now < self.retry_after_until:
            return "retry-after"
        if self.cooling_until is not None:
            return "cooling" if now < self.cooling_until else "half-open"
        return "healthy"

    # -- one request ------------------------------------------------------------------------

    def acquire(self) -> None:
        """Reserve this upstream for a request; call :meth:`release` when it is over."""
        now = self.clock()
        self.in_flight += 1
        self.counters["attempts"] += 1
        self.events.attempt(self.name)
        self.last_picked = now
        if self.cooling_until is not None and now >= self.cooling_until:
            self._probing = True

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        # A trial that ended without a verdict (the client left) lets the next request try.
        self._probing = False

    def record_success(self, *, client_error: bool = False) -> None:
        # A client error still proves the upstream is up and answering.
        self.counters["client_errors" if client_error else "successes"] += 1
        self._close()

    def record_failure(
        self, reason: str, retry_after: float | None = None, *, code: str, cooldown: CooldownEffect = "count"
    ) -> None:
        """A failed attempt: ``reason`` is the sentence for people, ``code`` the short label for metrics,
        ``cooldown`` what it does to the circuit (see :data:`CooldownEffect`)."""
        self.counters["failures"] += 1
        self.events.failure(self.name, code)
        if cooldown == "none":
            self._close()  # it answered, so it is up: a half-open trial has its verdict
        else:
            self._fail(reason, retry_after, at_once=cooldown == "now")

    def record_fallback(self, to: str) -> None:
        """The request this upstream failed moved on to ``to``."""
        self.counters["fallbacks"] += 1
        self.events.fallback(self.name, to)

    def record_skip(self) -> None:
        self.counters["skipped"] += 1

    # -- background probes ------------------------------------------------------------------

    def record_probe(self, ok: bool, reason: str | None = None) -> None:
        now = self.clock()
        if ok:
            self.counters["probes_ok"] += 1
            # A healthy /health ends a cooldown only once it has run its course: an upstream can
            # answer /health and still fail completions.
            if self.cooling_until is not None and now >= self.cooling_until and not self._probing:
                self._close()
        else:
            self.counters["probes_failed"] += 1
            self._fail(reason or "health probe failed", None)

    # -- internals --------------------------------------------------------------------------

    def _close(self) -> None:
        self.cooling_until = None
        self._probing = False
        self._failures.clear()

    def _fail(self, reason: str, retry_after: float | None, *, at_once: bool = False) -> None:
        now = self.clock()
        self.last_error = reason
        if retry_after is not None and retry_after > 0:
            self.retry_after_until = now + min(retry_after, self.policy.retry_after_max)
        if at_once:
            self.cooling_until = now + self.policy.period
            self._probing = False
            self._failures.clear()
            return
        if self.cooling_until is not None:
            if now >= self.cooling_until:  # the half-open trial failed: open again
                self.cooling_until = now + self.policy.period
                self._probing = False
            return
        self._failures.append(now)
        while self._failures and self._failures[0] <= now - self.policy.window:
            self._failures.popleft()
        if len(self._failures) >= self.policy.failures:
            self.cooling_until = now + self.policy.period
            self._failures.clear()

    def health(self, now: float, wall: float) -> dict[str, Any]:
        def wall_time(at: float | None) -> str | None:
            if at is None or at <= now:
                return None
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall + (at - now)))

        return {
            "name": self.name,
            "kind": self.config.kind,
            "state": self.status(now),
            "cooling_until": wall_time(self.cooling_until),
            "retry_after_until": wall_time(self.retry_after_until),
            # The same number as the spaceserve_proxy_cooldown_remaining_seconds gauge.
            "cooldown_seconds": None if (left := self.available_in(now)) is None else round(left, 1),
            "recent_failures": sum(1 for at in self._failures if at > now - self.policy.window),
            "last_error": self.last_error,
            "in_flight": self.in_flight,
            "counters": dict(self.counters),
        }


class UpstreamPool:
    """All upstreams' state, the chains aliases map to, and the choice among replicas."""

    def __init__(
        self,
        config: ProxyConfig,
        policy: CooldownPolicy,
        clock: Clock = time.monotonic,
        events: UpstreamEvents | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.states = {
            upstream.name: UpstreamState(upstream, config.keys.get(upstream.name), policy, clock, events)
            for upstream in config.upstreams()
        }

    def chain(self, model: str) -> tuple[Tier, ...]:
        chain = self.config.aliases.get(model) or self.config.aliases.get(CATCH_ALL)
        if chain is None:
            known = ", ".join(f"'{name}'" for name in self.model_names())
            raise ModelNotFound(f"the model '{model}' does not exist here; this proxy serves {known}", param="model")
        return chain

    def model_names(self) -> list[str]:
        """What ``/v1/models`` lists: the aliases, or without any, the models the upstreams serve."""
        if self.config.explicit_aliases:
            return [name for name in self.config.aliases if name != CATCH_ALL]
        names = [upstream.model for upstream in self.config.upstreams() if upstream.enabled and upstream.model]
        return list(dict.fromkeys(names))

    def pick(self, tier: Tier, tried: set[str]) -> UpstreamState | None:
        """The member of ``tier`` to try next: available, not tried yet, fewest requests in flight."""
        now = self.clock()
        candidates = [
            state
            for member in tier.members
            if member.name not in tried and (state := self.states[member.name]).unavailable_reason(now) is None
        ]
        if not candidates:
            return None
        # Ties go to the one picked longest ago, so equal replicas take turns.
        return min(candidates, key=lambda state: (state.in_flight, state.last_picked))

    def counters(self) -> dict[str, dict[str, int]]:
        """Per-upstream counters (attempts, successes, failures, ...) plus the in-flight gauge."""
        return {name: {**state.counters, "in_flight": state.in_flight} for name, state in self.states.items()}

    def cooldowns(self) -> dict[str, float]:
        """Seconds until each enabled upstream may be tried again (cooldown or Retry-After; 0: now)."""
        now = self.clock()
        return {name: left for name, state in self.states.items() if (left := state.available_in(now)) is not None}

    def status(self) -> tuple[str, str | None]:
        """``ok`` (every enabled upstream healthy), ``degraded`` (some skipped for now) or
        ``unavailable`` (none can be tried), with a sentence saying which when not ok."""
        now = self.clock()
        enabled = [state for state in self.states.values() if state.config.enabled]
        usable = [state for state in enabled if state.unavailable_reason(now) is None]
        unwell = [state.name for state in enabled if state.status(now) != "healthy"]
        if not usable:
            which = ", ".join(unwell) or "none is enabled"
            return "unavailable", f"no upstream can be tried now ({which})"
        if unwell:
            return "degraded", f"{len(unwell)} of {len(enabled)} upstreams not healthy: {', '.join(unwell)}"
        return "ok", None

    def health(self) -> list[dict[str, Any]]:
        now, wall = self.clock(), time.time()
        rows = []
        for tier in self.config.tiers:
            for member in tier.members:
                rows.append({**self.states[member.name].health(now, wall), "tier": tier.name})
        return rows
