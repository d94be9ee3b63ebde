"""Narrow unit tests for rate-limit buckets, their settings, and /metrics on an app of any mode."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from spaceserve.base.auth import fingerprint
from spaceserve.base.ratelimit import Limits, RateLimiter, duration
from spaceserve.model.app import build_base_app
from spaceserve.proxy.metrics import ProxyMetrics
from spaceserve.settings import CommonSettings, SettingsError, load_settings

from ..support.clock import Clock


def header(decision_headers: list[tuple[str, str]], name: str) -> str:
    return dict(decision_headers)[name]


def test_request_bucket_counts_the_first_request_and_refills_over_a_minute() -> None:
    clock = Clock()
    limiter = RateLimiter(Limits(rpm=2), {}, clock)
    first = limiter.check("a")
    assert first.refused is None
    assert header(first.headers, "x-ratelimit-remaining-requests") == "1"
    assert limiter.check("a").refused is None
    refused = limiter.check("a")
    assert refused.refused == "requests"
    assert refused.retry_after == 30  # one request comes back every 60/2 s
    assert limiter.check("b").refused is None  # another caller has its own bucket
    clock.now += 30
    assert limiter.check("a").refused is None
    assert limiter.check("a").refused == "requests"


def test_token_bucket_goes_negative_and_blocks_until_refilled() -> None:
    clock = Clock()
    limiter = RateLimiter(Limits(tpm=60), {}, clock)  # one token per second
    assert limiter.check("a").refused is None
    limiter.charge("a", 100)  # a long completion overdraws the bucket by 40
    refused = limiter.check("a")
    assert refused.refused == "tokens"
    assert refused.retry_after == 41
    assert header(refused.headers, "x-ratelimit-remaining-tokens") == "0"
    clock.now += 40.5
    assert limiter.check("a").refused == "tokens"
    clock.now += 1
    assert limiter.check("a").refused is None


def test_overrides_replace_the_default_per_subject() -> None:
    limiter = RateLimiter(Limits(rpm=100), {"abcd1234": Limits(rpm=1), "10.0.0.1": Limits()}, Clock())
    assert limiter.check("abcd1234").refused is None
    assert limiter.check("abcd1234").refused == "requests"
    for _ in range(5):
        decision = limiter.check("10.0.0.1")  # 0/0: no limit, and no headers
        assert decision.refused is None and decision.headers == []


def test_reset_durations_use_openai_format() -> None:
    assert duration(0.02) == "20ms"
    assert duration(1.5) == "1.5s"
    assert duration(360) == "6m0s"


def test_overrides_setting_takes_fingerprints_and_explains_mistakes(monkeypatch: pytest.MonkeyPatch) -> None:
    fp = fingerprint("sk-test")
    monkeypatch.setenv("RATE_LIMIT_RPM", "10")
    monkeypatch.setenv("RATE_LIMIT_OVERRIDES", f'{{"{fp}": {{"tpm": 500}}, "127.0.0.1": {{"rpm": 0}}}}')
    settings = load_settings(CommonSettings)
    limiter = RateLimiter.from_settings(settings)
    assert limiter.limits_for(fp) == Limits(rpm=10, tpm=500)  # rpm inherited from the default
    assert limiter.limits_for("127.0.0.1") == Limits(rpm=0, tpm=0)
    for bad, words in [
        ("{not json", "not valid JSON"),
        ('{"sk-test": {"rpm": 1}}', "fingerprint"),
        (f'{{"{fp}": {{"rpd": 1}}}}', "rpd"),
        (f'{{"{fp}": {{"rpm": -1}}}}', "greater than or equal to 0"),
    ]:
        monkeypatch.setenv("RATE_LIMIT_OVERRIDES", bad)
        with pytest.raises(SettingsError) as info:
            load_settings(CommonSettings)
        assert "RATE_LIMIT_OVERRIDES" in str(info.value) and words in str(info.value)


def base_app(**settings: object) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield

    return build_base_app(CommonSettings(**settings), lifespan, "another mode")  # type: ignore[arg-type]


def samples(text: str) -> dict[str, float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


def test_metrics_route_comes_with_every_app_and_needs_a_key_unless_public() -> None:
    with TestClient(base_app(api_keys="sk-one")) as client:
        assert client.get("/metrics").status_code == 401
        response = client.get("/metrics", headers={"Authorization": "Bearer sk-one"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "spaceserve_requests_total" in response.text
    with TestClient(base_app(api_keys="sk-one", metrics_public=True)) as client:
        client.get("/nowhere")
        values = samples(client.get("/metrics").text)
        assert values["spaceserve_requests_total{model=,route=unmatched,status=404}"] == 1
        assert "spaceserve_model_state{state=ok}" not in values  # no model runtime in this mode


def test_proxy_metrics_export_counters_and_cooldowns_on_the_app_registry() -> None:
    app = base_app(metrics_public=True)
    cooldowns = {"primary": 12.5, "fallback": 0.0}
    proxy = ProxyMetrics(app.state.metrics.registry, lambda: cooldowns)
    proxy.attempt("primary")
    proxy.failure("primary", "timeout")
    proxy.fallback("primary", "fallback")
    proxy.attempt("fallback")
    with TestClient(app) as client:
        values = samples(client.get("/metrics").text)
    assert values["spaceserve_proxy_attempts_total{upstream=primary}"] == 1
    assert values["spaceserve_proxy_failures_total{reason=timeout,upstream=primary}"] == 1
    assert values["spaceserve_proxy_fallbacks_total{from_upstream=primary,to_upstream=fallback}"] == 1
    assert values["spaceserve_proxy_upstream_cooling_down{upstream=primary}"] == 1
    assert values["spaceserve_proxy_upstream_cooling_down{upstream=fallback}"] == 0
    assert values["spaceserve_proxy_cooldown_remaining_seconds{upstream=primary}"] == 12.5
