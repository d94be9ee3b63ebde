"""The proxy with the shared operations features, end to end: real proxy processes, per-key rate
limits over the real model server as upstream, and /metrics and /health moving together while a
failing upstream falls back to a healthy one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from spaceserve.base.auth import fingerprint

from ..support.proxy import FakeUpstream, chat, closed_port_url, health, sse_data, start_proxy, upstream
from ..support.servers import MODEL_ID, ServerProcess
from .test_metrics_and_limits import auth, metric, scrape

LIMITED = "sk-proxy-limited-3e1a"  # 2 requests per minute
THRIFTY = "sk-proxy-thrifty-7c45"  # 10 generated tokens per minute
STREAMER = "sk-proxy-streamer-02bd"  # 10 generated tokens per minute, streaming
FREE = "sk-proxy-free-9f10"  # no limit
CHAT = "/v1/chat/completions"


def body(max_tokens: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "model": "model",
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }


# -- rate limits ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_proxy(start_server: Any, server: ServerProcess) -> ServerProcess:
    model = upstream("model", server.url + "/v1", model=MODEL_ID, first_byte_timeout=60, total_timeout=120)
    overrides = {
        fingerprint(LIMITED): {"rpm": 2},
        fingerprint(THRIFTY): {"tpm": 10},
        fingerprint(STREAMER): {"tpm": 10},
    }
    return start_proxy(
        start_server,
        {"upstreams": [model], "aliases": {"model": ["model"]}},
        API_KEYS=f"{LIMITED},{THRIFTY},{STREAMER},{FREE}",
        RATE_LIMIT_OVERRIDES=json.dumps(overrides),
    )


def test_proxy_cuts_a_limited_key_off_at_its_limit_while_another_key_is_not(limited_proxy: ServerProcess) -> None:
    seen = []
    for _ in range(2):
        response = httpx.post(limited_proxy.url + CHAT, json=body(), headers=auth(LIMITED), timeout=60)
        assert response.status_code == 200, response.text
        assert response.headers["x-upstream"] == "model"
        assert response.headers["x-ratelimit-limit-requests"] == "2"
        seen.append(response.headers["x-ratelimit-remaining-requests"])
    assert seen == ["1", "0"]
    refused = httpx.post(limited_proxy.url + CHAT, json=body(), headers=auth(LIMITED), timeout=60)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert "x-upstream" not in refused.headers, "refused before any upstream was asked"
    assert httpx.get(limited_proxy.url + "/v1/models", headers=auth(LIMITED)).status_code == 429
    free = httpx.post(limited_proxy.url + CHAT, json=body(), headers=auth(FREE), timeout=60)
    assert free.status_code == 200
    assert not any(name.startswith("x-ratelimit") for name in free.headers)
    values = scrape(limited_proxy, FREE)
    assert metric(values, "spaceserve_rate_limit_rejections_total", key=fingerprint(LIMITED), limit="requests") == 2


def test_proxy_charges_generated_tokens_from_the_upstreams_usage(limited_proxy: ServerProcess) -> None:
    first = httpx.post(limited_proxy.url + CHAT, json=body(12), headers=auth(THRIFTY), timeout=60)
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-tokens"] == "10"
    assert first.headers["x-ratelimit-remaining-tokens"] == "10"  # charged when the response ended
    assert first.json()["usage"]["completion_tokens"] == 12  # what the real model server reported
    second = httpx.post(limited_proxy.url + CHAT, json=body(), headers=auth(THRIFTY), timeout=60)
    assert second.status_code == 429
    assert "generated tokens" in second.json()["error"]["message"]
    # 12 tokens taken from 10: the bucket is 2 below zero and refills at 10 per minute.
    assert 12 <= int(second.headers["retry-after"]) <= 19


def test_proxy_charges_a_stream_when_its_usage_chunk_passes_through(limited_proxy: ServerProcess) -> None:
    streamed = body(12, stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", limited_proxy.url + CHAT, json=streamed, headers=auth(STREAMER), timeout=60) as first:
        assert first.status_code == 200
        assert first.headers["x-ratelimit-remaining-tokens"] == "10"
        events = sse_data(first.read().decode())
    assert events[-1] == "[DONE]"
    usage = [json.loads(e)["usage"] for e in events[:-1] if json.loads(e).get("usage")]
    assert usage and usage[-1]["completion_tokens"] == 12
    second = httpx.post(limited_proxy.url + CHAT, json=body(), headers=auth(STREAMER), timeout=60)
    assert second.status_code == 429
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"


# -- metrics --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeUpstream]]:
    made = {name: FakeUpstream(mode, name=name) for name, mode in (("bad", "500"), ("good", "ok"), ("drop", "drop"))}
    yield made
    for fake in made.values():
        fake.stop()


@pytest.fixture(scope="module")
def watched_proxy(start_server: Any, fakes: dict[str, FakeUpstream]) -> ServerProcess:
    config = {
        "upstreams": [
            upstream("refused", closed_port_url()),
            upstream("bad", fakes["bad"].url),
            upstream("good", fakes["good"].url),
            upstream("drop", fakes["drop"].url),
        ],
        "aliases": {"m": ["refused", "bad", "good"], "d": ["drop"]},
    }
    return start_proxy(
        start_server,
        config,
        METRICS_PUBLIC="true",
        UPSTREAM_COOLDOWN_FAILURES="2",
        UPSTREAM_COOLDOWN_WINDOW="600",
        UPSTREAM_COOLDOWN_PERIOD="600",  # no recovery while the test runs
    )


def test_metrics_show_attempts_failures_fallbacks_and_cooldowns(watched_proxy: ServerProcess) -> None:
    start = scrape(watched_proxy, key=None)
    for name in ("refused", "bad", "good"):
        assert metric(start, "spaceserve_proxy_upstream_cooling_down", upstream=name) == 0
        assert metric(start, "spaceserve_proxy_attempts_total", upstream=name) == 0

    assert chat(watched_proxy, "m").headers["x-upstream"] == "good"
    once = scrape(watched_proxy, key=None)
    assert metric(once, "spaceserve_proxy_attempts_total", upstream="refused") == 1
    assert metric(once, "spaceserve_proxy_attempts_total", upstream="bad") == 1
    assert metric(once, "spaceserve_proxy_attempts_total", upstream="good") == 1
    assert metric(once, "spaceserve_proxy_failures_total", upstream="refused", reason="connect_error") == 1
    assert metric(once, "spaceserve_proxy_failures_total", upstream="bad", reason="http_500") == 1
    assert metric(once, "spaceserve_proxy_fallbacks_total", from_upstream="refused", to_upstream="bad") == 1
    assert metric(once, "spaceserve_proxy_fallbacks_total", from_upstream="bad", to_upstream="good") == 1
    assert metric(once, "spaceserve_proxy_upstream_cooling_down", upstream="bad") == 0  # one failure of two

    # The second failure of each opens its circuit: both are cooling down.
    assert chat(watched_proxy, "m").headers["x-upstream"] == "good"
    twice = scrape(watched_proxy, key=None)
    for name in ("refused", "bad"):
        assert metric(twice, "spaceserve_proxy_attempts_total", upstream=name) == 2
        assert metric(twice, "spaceserve_proxy_upstream_cooling_down", upstream=name) == 1
        assert 590 < metric(twice, "spaceserve_proxy_cooldown_remaining_seconds", upstream=name) <= 600
    assert metric(twice, "spaceserve_proxy_fallbacks_total", from_upstream="bad", to_upstream="good") == 2
    assert metric(twice, "spaceserve_proxy_upstream_cooling_down", upstream="good") == 0
    assert metric(twice, "spaceserve_proxy_cooldown_remaining_seconds", upstream="good") == 0

    # Skipped upstreams are neither attempted nor fallen back from.
    assert chat(watched_proxy, "m").headers["x-upstream"] == "good"
    thrice = scrape(watched_proxy, key=None)
    assert metric(thrice, "spaceserve_proxy_attempts_total", upstream="bad") == 2
    assert metric(thrice, "spaceserve_proxy_attempts_total", upstream="good") == 3
    assert metric(thrice, "spaceserve_proxy_fallbacks_total", from_upstream="bad", to_upstream="good") == 2

    # A stream that breaks after its first chunk is a failure with its own reason, not a fallback.
    broken = httpx.post(watched_proxy.url + CHAT, json={**body(), "model": "d", "stream": True}, timeout=30)
    assert "upstream_stream_broken" in broken.text
    last = scrape(watched_proxy, key=None)
    assert metric(last, "spaceserve_proxy_failures_total", upstream="drop", reason="dropped") == 1

    # /health counts the same events: one source, two views.
    rows = health(watched_proxy)
    for name, row in rows.items():
        counters = row["counters"]
        assert counters["attempts"] == metric(last, "spaceserve_proxy_attempts_total", upstream=name), name
        failures = sum(
            v for k, v in last.items() if k.startswith("spaceserve_proxy_failures_total{") and f"upstream={name}" in k
        )
        assert counters["failures"] == failures, name
        fallbacks = sum(
            v
            for k, v in last.items()
            if k.startswith("spaceserve_proxy_fallbacks_total{") and f"from_upstream={name}," in k
        )
        assert counters["fallbacks"] == fallbacks, name
        gauge = metric(last, "spaceserve_proxy_cooldown_remaining_seconds", upstream=name)
        assert row["cooldown_seconds"] == pytest.approx(gauge, abs=2), name


def test_health_reports_each_upstreams_state_and_a_degraded_proxy(watched_proxy: ServerProcess) -> None:
    chat(watched_proxy, "m")
    chat(watched_proxy, "m")  # both failing upstreams are cooling after two failures
    response = httpx.get(watched_proxy.url + "/health", timeout=5)
    assert response.status_code == 200, "some upstream can still serve"
    got = response.json()
    assert got["status"] == "degraded"
    assert "refused" in got["reason"] and "bad" in got["reason"]
    assert got["models"] == ["m", "d"]
    states = {row["name"]: row["state"] for row in got["upstreams"]}
    assert states["refused"] == states["bad"] == "cooling"
    assert states["good"] == "healthy"
    rows = {row["name"]: row for row in got["upstreams"]}
    assert rows["bad"]["cooldown_seconds"] > 500 and rows["good"]["cooldown_seconds"] == 0
    assert "HTTP 500" in rows["bad"]["last_error"]
