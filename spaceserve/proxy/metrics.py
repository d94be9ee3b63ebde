"""The proxy's Prometheus counters and cooldown gauges, on the app's registry."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric


class ProxyMetrics:
    """The proxy's counters, on the app's registry. The proxy calls these methods; ``cooldowns``
    returns ``{upstream: seconds of cooldown left}`` (0 when the upstream is usable) at scrape time."""

    def __init__(self, registry: CollectorRegistry, cooldowns: Callable[[], dict[str, float]]) -> None:
        self.attempts = Counter(
            "spaceserve_proxy_attempts", "requests sent to an upstream", ["upstream"], registry=registry
        )
        self.failures = Counter(
            "spaceserve_proxy_failures",
            "upstream attempts that did not serve, by reason (connect_error, first_byte_timeout, http_503, dropped, "
            "context_length, auth, payment, not_found, ...)",
            ["upstream", "reason"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "spaceserve_proxy_fallbacks",
            "requests moved on from one upstream to the next",
            ["from_upstream", "to_upstream"],
            registry=registry,
        )
        registry.register(_CooldownCollector(cooldowns))

    def attempt(self, upstream: str) -> None:
        self.attempts.labels(upstream).inc()

    def failure(self, upstream: str, reason: str) -> None:
        self.failures.labels(upstream, reason).inc()

    def fallback(self, from_upstream: str, to_upstream: str) -> None:
        self.fallbacks.labels(from_upstream, to_upstream).inc()


class _CooldownCollector:
    def __init__(self, cooldowns: Callable[[], dict[str, float]]) -> None:
        self.cooldowns = cooldowns

    def collect(self) -> Iterable[Metric]:
        cooling = GaugeMetricFamily(
            "spaceserve_proxy_upstream_cooling_down", "1 while an upstream is in cooldown", labels=["upstream"]
        )
        left = GaugeMetricFamily(
            "spaceserve_proxy_cooldown_remaining_seconds", "seconds of cooldown left", labels=["upstream"]
        )
        for upstream, seconds in sorted(self.cooldowns().items()):
            cooling.add_metric([upstream], 1.0 if seconds > 0 else 0.0)
            left.add_metric([upstream], max(0.0, seconds))
        yield cooling
        yield left
